"""config/localize.yaml, the parameter table and launch/localize.launch.py agree with each other.

The launch file is loaded against minimal stand-ins of the ``launch`` /
``launch_ros`` / ``ament_index_python`` APIs it uses (the pip install has no
ROS launch), so these tests pin what it declares and starts, not launch itself.
"""
import importlib.util
import re
import runpy
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import yaml

from spatialoc_ros.ros.parameters import PARAMETERS, PARAMETERS_BY_NAME

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "localize.yaml"
LAUNCH = REPO / "launch" / "localize.launch.py"
CMAKE = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
NODE_KEY = "/**/spatialoc_localizer"
SHARE = "/opt/ws/install/spatialoc_ros/share/spatialoc_ros"


def yaml_parameters():
    doc = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    assert list(doc) == [NODE_KEY], "one section, for the node in any namespace"
    return doc[NODE_KEY]["ros__parameters"]


def test_yaml_lists_exactly_the_declared_parameters():
    declared = [p.name for p in PARAMETERS]
    assert set(yaml_parameters()) == set(declared), (
        f"only in the YAML: {sorted(set(yaml_parameters()) - set(declared))}; "
        f"only declared: {sorted(set(declared) - set(yaml_parameters()))}")


def test_yaml_values_are_the_defaults_with_their_types():
    for name, value in yaml_parameters().items():
        default = PARAMETERS_BY_NAME[name].default
        assert type(value) is type(default), f"{name}: {value!r} is not a {type(default).__name__}"
        assert (value == pytest.approx(default) if isinstance(default, float)
                else value == default), name
    assert (yaml_parameters()["map_path"] == "data/demo_map"
            and yaml_parameters()["weights_dir"] == "models")


def test_every_yaml_parameter_has_a_comment():
    lines = CONFIG.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        key = re.match(r"^    (\w+):", line)
        if key:
            above = lines[i - 1].strip()
            assert above.startswith("#"), f"{key.group(1)} has no comment above it"


# --- the launch file ---------------------------------------------------------------------------


class Recorded:
    """Stand-in for a launch action: remembers its constructor arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context.launch_configurations[self.name]


def fake_modules():
    """sys.modules entries for the launch APIs the launch file imports."""
    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        return m

    class LaunchDescription(Recorded):
        pass

    class DeclareLaunchArgument(Recorded):
        pass

    class OpaqueFunction(Recorded):
        pass

    class LifecycleNode(Recorded):
        pass

    return {
        "launch": module("launch", LaunchDescription=LaunchDescription),
        "launch.actions": module("launch.actions", DeclareLaunchArgument=DeclareLaunchArgument,
                                 OpaqueFunction=OpaqueFunction),
        "launch.substitutions": module("launch.substitutions",
                                       LaunchConfiguration=LaunchConfiguration),
        "launch_ros": module("launch_ros"),
        "launch_ros.actions": module("launch_ros.actions", LifecycleNode=LifecycleNode),
        "ament_index_python": module("ament_index_python"),
        "ament_index_python.packages": module(
            "ament_index_python.packages",
            get_package_share_directory=lambda pkg: (SHARE if pkg == "spatialoc_ros"
                                                     else pytest.fail(pkg))),
    }


@pytest.fixture
def launch_description():
    with mock.patch.dict(sys.modules, fake_modules()):
        spec = importlib.util.spec_from_file_location("localize_launch", LAUNCH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.generate_launch_description()


def run_opaque(description, **given):
    """The node the launch file starts for the given launch arguments (others: defaults)."""
    actions = description.args[0]
    arguments = {a.args[0]: a.kwargs["default_value"]
                 for a in actions if "default_value" in a.kwargs}
    arguments.update(given)
    context = types.SimpleNamespace(launch_configurations=arguments)
    (opaque,) = [a for a in actions if "function" in a.kwargs]
    (node,) = opaque.kwargs["function"](context)
    return node.kwargs


def test_launch_arguments(launch_description):
    declared = {a.args[0]: a.kwargs for a in launch_description.args[0] if a.args}
    assert set(declared) == {"params_file", "namespace", "map", "weights_dir", "device",
                             "use_sim_time"}
    assert declared["params_file"]["default_value"] == f"{SHARE}/config/localize.yaml"
    assert declared["namespace"]["default_value"] == "spatialoc"
    assert all(kw.get("description") for kw in declared.values())


def test_launch_starts_the_registered_executable_with_the_shipped_config(launch_description):
    node = run_opaque(launch_description)
    assert (node["package"], node["executable"], node["name"]) == ("spatialoc_ros", "localizer",
                                                                   "spatialoc_localizer")
    assert node["namespace"] == "spatialoc"
    params_file, overrides = node["parameters"]
    assert params_file == f"{SHARE}/config/localize.yaml" and CONFIG.is_file()
    assert overrides == {"weights_dir": f"{SHARE}/models", "use_sim_time": False}

    # `localizer` is installed into lib/spatialoc_ros (what `ros2 run` and launch look in),
    # running the same function as the spatialoc-localizer console script.
    block = re.search(r"set\(SPATIALOC_ROS_EXECUTABLES(.*?)\)", CMAKE, re.S).group(1)
    executables = dict(e.split("=") for e in re.findall(r'"([^"]+)"', block))
    with mock.patch("setuptools.setup") as setup:
        runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    scripts = dict(re.fullmatch(r"\s*(\S+)\s*=\s*(\S+)\s*", e).groups()
                   for e in setup.call_args.kwargs["entry_points"]["console_scripts"])
    assert (executables["localizer"] == scripts["spatialoc-localizer"]
            == "spatialoc_ros.ros.main:main")
    assert "SPATIALOC_ROS_EXECUTABLES" in re.search(r"foreach\(_entry IN LISTS ([^)]*)\)",
                                                    CMAKE).group(1)
    assert re.search(r"install\(DIRECTORY launch config models", CMAKE)


def test_launch_arguments_override_the_params_file(launch_description):
    node = run_opaque(launch_description, map="/maps/city", weights_dir="", device="cuda",
                      use_sim_time="true", namespace="robot1/spatialoc",
                      params_file="/tmp/mine.yaml")
    assert node["namespace"] == "robot1/spatialoc"
    assert node["parameters"] == ["/tmp/mine.yaml", {"map_path": "/maps/city", "device": "cuda",
                                                     "use_sim_time": True}]
    assert set(node["parameters"][1]) - {"use_sim_time"} <= set(PARAMETERS_BY_NAME)
