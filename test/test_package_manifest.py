"""package.xml, CMakeLists.txt, setup.py and msg/ must agree with each other."""
import ast
import re
import runpy
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from unittest import mock

import spatialoc_ros

REPO = Path(__file__).resolve().parents[1]
MSG_FILES = sorted((REPO / "msg").glob("*.msg"))
CMAKE = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
PACKAGE = ET.parse(REPO / "package.xml").getroot()


def texts(tag):
    return {e.text.strip() for e in PACKAGE.findall(tag)}


def message_packages(path):
    """Packages that the fields of one .msg file use ("geometry_msgs/Pose" -> "geometry_msgs")."""
    packages = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        field_type = line.split()[0].split("[")[0]
        if "/" in field_type:
            packages.add(field_type.split("/")[0])
        elif field_type == "Header":  # the ROS 1 spelling still means std_msgs/Header
            packages.add("std_msgs")
    return packages


def setup_kwargs():
    """The arguments setup.py passes to setuptools.setup(), without building anything."""
    with mock.patch("setuptools.setup") as setup:
        runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    return setup.call_args.kwargs


def console_scripts():
    """{"spatialoc": "spatialoc_ros.cli:main", ...} from setup.py."""
    entries = setup_kwargs()["entry_points"]["console_scripts"]
    return dict(re.fullmatch(r"\s*(\S+)\s*=\s*(\S+)\s*", e).groups() for e in entries)


MSG_DEPENDENCIES = set().union(*map(message_packages, MSG_FILES)) - {"spatialoc_ros"}


def test_there_are_messages():
    assert {p.name for p in MSG_FILES} >= {"Hypothesis.msg", "LocalizationResult.msg"}
    assert MSG_DEPENDENCIES >= {"std_msgs", "geometry_msgs"}


def test_package_xml_identity():
    assert PACKAGE.tag == "package" and PACKAGE.get("format") == "3"
    assert PACKAGE.findtext("name") == "spatialoc_ros"
    assert PACKAGE.findtext("version") == spatialoc_ros.__version__
    assert PACKAGE.findtext("export/build_type") == "ament_cmake"
    assert "rosidl_interface_packages" in texts("member_of_group")
    assert {"ament_cmake", "rosidl_default_generators"} <= texts("buildtool_depend")
    assert "rosidl_default_runtime" in texts("exec_depend")
    assert PACKAGE.find("maintainer").get("email") and PACKAGE.findtext("license")


def test_package_xml_declares_what_messages_and_node_use():
    both = texts("depend") | (texts("build_depend") & texts("exec_depend"))
    missing = MSG_DEPENDENCIES - both
    assert not missing, f"package.xml lacks <depend> on {sorted(missing)}"
    runtime = texts("depend") | texts("exec_depend")
    node = {"rclpy", "sensor_msgs", "visualization_msgs", "diagnostic_msgs", "lifecycle_msgs"}
    assert node <= runtime, f"package.xml lacks {sorted(node - runtime)}"


def test_cmake_lists_every_message():
    listed = set(re.findall(r'"?(msg/[A-Za-z0-9_]+\.msg)"?', CMAKE))
    on_disk = {f"msg/{p.name}" for p in MSG_FILES}
    assert listed == on_disk, f"not built: {on_disk - listed}; missing: {listed - on_disk}"


def test_cmake_finds_message_dependencies():
    call = re.search(r"rosidl_generate_interfaces\((.*?)\)", CMAKE, re.S).group(1)
    declared = set(call.split("DEPENDENCIES", 1)[1].split()) if "DEPENDENCIES" in call else set()
    for pkg in MSG_DEPENDENCIES:
        assert re.search(rf"find_package\({pkg} REQUIRED\)", CMAKE), pkg
        assert pkg in declared, f"{pkg} missing from DEPENDENCIES"


def test_cmake_has_the_include_path_fix():
    version = re.search(r"cmake_minimum_required\(VERSION ([\d.]+)\)", CMAKE).group(1)
    assert tuple(map(int, version.split("."))) >= (3, 21)  # IMPORTED_TARGETS property
    fix = CMAKE.find("get_property(_imported DIRECTORY PROPERTY IMPORTED_TARGETS)")
    assert fix > CMAKE.find("rosidl_generate_interfaces(") > 0, "the fix must follow the targets"
    for needle in ('MATCHES "/opt/python/"', "INTERFACE_INCLUDE_DIRECTORIES",
                   "${Python3_NumPy_INCLUDE_DIRS}", "${Python3_INCLUDE_DIRS}"):
        assert needle in CMAKE[fix:], needle


def test_venv_build_is_interfaces_only():
    assert re.search(r"option\(SPATIALOC_INTERFACES_ONLY\b", CMAKE)
    assert "-DSPATIALOC_INTERFACES_ONLY=ON" in (REPO / "Makefile").read_text(encoding="utf-8")


def test_workspace_install_has_its_folders():
    for folder in ("launch", "config", "models"):
        assert (REPO / folder).is_dir(), f"CMakeLists.txt installs {folder}/"
    # The launch file finds these in share/spatialoc_ros (install(DIRECTORY launch config ...)).
    installed = re.search(r"install\(DIRECTORY ([^)]*?)\s+DESTINATION share/\$\{PROJECT_NAME\}",
                          CMAKE).group(1).split()
    for path in ("launch/localize.launch.py", "config/localize.yaml", "config/spatialoc.rviz"):
        assert (REPO / path).is_file() and path.split("/")[0] in installed, path


def test_setup_py_matches_package_xml():
    kwargs = setup_kwargs()
    assert kwargs["name"] == PACKAGE.findtext("name")
    assert kwargs["version"] == PACKAGE.findtext("version")


def test_console_scripts_exist():
    scripts = console_scripts()
    assert scripts.get("spatialoc") == "spatialoc_ros.cli:main"
    for name, target in scripts.items():
        module, func = target.split(":")
        source = REPO.joinpath(*module.split(".")).with_suffix(".py")
        assert source.is_file(), f"{name}: {source} does not exist"
        defined = {n.name for n in ast.parse(source.read_text(encoding="utf-8")).body
                   if isinstance(n, ast.FunctionDef)}
        assert func in defined, f"{name}: {module} defines no {func}()"
        assert (Path(sys.executable).parent / name).is_file(), f"{name} not installed in the venv"


def test_workspace_scripts_match_setup_py():
    """colcon installs lib/spatialoc_ros/<name> wrappers from a list in CMakeLists.txt."""
    block = re.search(r"set\(SPATIALOC_CONSOLE_SCRIPTS(.*?)\)", CMAKE, re.S).group(1)
    cmake = dict(e.split("=") for e in re.findall(r'"([^"]+)"', block))
    assert cmake == console_scripts()
