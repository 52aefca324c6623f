"""config/localize.yaml, config/spatialoc.rviz, the parameter table, the node and
launch/localize.launch.py agree with each other.

The launch file is loaded against minimal stand-ins of the ``launch`` /
``launch_ros`` / ``ament_index_python`` APIs it uses (the pip install has no
ROS launch), so these tests pin what it declares and starts, not launch itself.
"""
import ast
import json
import importlib.util
import re
import runpy
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import yaml

from spatialoc_ros.ros import node as node_module
from spatialoc_ros.ros.map_cloud import FIELDS
from spatialoc_ros.ros.parameters import PARAMETERS, PARAMETERS_BY_NAME

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "localize.yaml"
RVIZ = REPO / "config" / "spatialoc.rviz"
LAUNCH = REPO / "launch" / "localize.launch.py"
CMAKE = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
NODE_KEY = "/**/spatialoc_localizer"
SHARE = "/opt/ws/install/spatialoc_ros/share/spatialoc_ros"
# Install prefixes of the packages the ament index stand-in knows (a test adds rviz2).
PREFIXES = {"spatialoc_ros": "/opt/ws/install/spatialoc_ros"}


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

    class Node(Recorded):
        pass

    class LogInfo(Recorded):
        pass

    class PackageNotFoundError(KeyError):
        pass

    def get_package_prefix(pkg):
        if pkg not in PREFIXES:
            raise PackageNotFoundError(f"package '{pkg}' not found")
        return PREFIXES[pkg]

    return {
        "launch": module("launch", LaunchDescription=LaunchDescription),
        "launch.actions": module("launch.actions", DeclareLaunchArgument=DeclareLaunchArgument,
                                 OpaqueFunction=OpaqueFunction, LogInfo=LogInfo),
        "launch.substitutions": module("launch.substitutions",
                                       LaunchConfiguration=LaunchConfiguration),
        "launch_ros": module("launch_ros"),
        "launch_ros.actions": module("launch_ros.actions", LifecycleNode=LifecycleNode,
                                     Node=Node),
        "ament_index_python": module("ament_index_python"),
        "ament_index_python.packages": module(
            "ament_index_python.packages", PackageNotFoundError=PackageNotFoundError,
            get_package_prefix=get_package_prefix,
            get_package_share_directory=lambda pkg: (SHARE if pkg == "spatialoc_ros"
                                                     else pytest.fail(pkg))),
    }


@pytest.fixture
def launch_module():
    """launch/localize.launch.py, imported against the stand-ins."""
    with mock.patch.dict(sys.modules, fake_modules()):
        spec = importlib.util.spec_from_file_location("localize_launch", LAUNCH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


@pytest.fixture
def launch_description(launch_module):
    return launch_module.generate_launch_description()


def run_launch(description, **given):
    """What the launch file's functions start for the given launch arguments (others: their
    defaults): the actions they return, in order."""
    actions = description.args[0]
    arguments = {a.args[0]: a.kwargs["default_value"]
                 for a in actions if "default_value" in a.kwargs}
    arguments.update(given)
    context = types.SimpleNamespace(launch_configurations=arguments)
    return [started for a in actions if "function" in a.kwargs
            for started in a.kwargs["function"](context)]


def of_kind(actions, kind):
    return [a for a in actions if type(a).__name__ == kind]


def run_opaque(description, **given):
    """The localizer node the launch file starts for the given launch arguments."""
    (node,) = of_kind(run_launch(description, **given), "LifecycleNode")
    return node.kwargs


def test_launch_arguments(launch_description):
    declared = {a.args[0]: a.kwargs for a in launch_description.args[0] if a.args}
    assert set(declared) == {"params_file", "namespace", "map", "weights_dir", "device",
                             "use_sim_time", "rviz", "rviz_config"}
    assert declared["params_file"]["default_value"] == f"{SHARE}/config/localize.yaml"
    assert declared["namespace"]["default_value"] == "spatialoc"
    assert declared["rviz"]["default_value"] == "false"
    assert declared["rviz_config"]["default_value"] == f"{SHARE}/config/spatialoc.rviz"
    assert all(kw.get("description") for kw in declared.values())


def test_launch_starts_the_registered_executable_with_the_shipped_config(launch_description):
    assert [type(a).__name__ for a in run_launch(launch_description)] == ["LifecycleNode"], (
        "by default the localizer alone")
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
    assert RVIZ.is_file(), "config/ is installed whole: the RViz config goes with it"


def test_launch_arguments_override_the_params_file(launch_description):
    node = run_opaque(launch_description, map="/maps/city", weights_dir="", device="cuda",
                      use_sim_time="true", namespace="robot1/spatialoc",
                      params_file="/tmp/mine.yaml")
    assert node["namespace"] == "robot1/spatialoc"
    assert node["parameters"] == ["/tmp/mine.yaml", {"map_path": "/maps/city", "device": "cuda",
                                                     "use_sim_time": True}]
    assert set(node["parameters"][1]) - {"use_sim_time"} <= set(PARAMETERS_BY_NAME)


# --- RViz ---------------------------------------------------------------------------------------


def test_rviz_without_rviz2_installed_logs_one_line_and_starts_the_node(launch_description):
    assert "rviz2" not in PREFIXES
    actions = run_launch(launch_description, rviz="true")
    assert not of_kind(actions, "Node"), "no rviz2 node"
    (log,) = of_kind(actions, "LogInfo")
    assert "RViz is not installed" in log.kwargs["msg"] and "\n" not in log.kwargs["msg"]
    assert len(of_kind(actions, "LifecycleNode")) == 1


def test_rviz_starts_rviz2_with_the_installed_config(launch_description, launch_module,
                                                     monkeypatch):
    monkeypatch.setitem(PREFIXES, "rviz2", "/opt/ros/jazzy")
    assert launch_module.rviz_installed()
    actions = run_launch(launch_description, rviz="True")
    assert not of_kind(actions, "LogInfo") and len(of_kind(actions, "LifecycleNode")) == 1
    (rviz,) = of_kind(actions, "Node")
    assert (rviz.kwargs["package"], rviz.kwargs["executable"]) == ("rviz2", "rviz2")
    assert rviz.kwargs["arguments"] == ["-d", f"{SHARE}/config/spatialoc.rviz"]
    assert rviz.kwargs["parameters"] == [{"use_sim_time": False}]
    assert rviz.kwargs["remappings"] == [], "the config's topics are those of the default"

    # Another config, another namespace: the config's topics follow the node there.
    actions = run_launch(launch_description, rviz="true", rviz_config="/tmp/mine.rviz",
                         namespace="robot1/spatialoc", use_sim_time="true")
    (rviz,) = of_kind(actions, "Node")
    assert rviz.kwargs["arguments"] == ["-d", "/tmp/mine.rviz"]
    assert rviz.kwargs["parameters"] == [{"use_sim_time": True}]
    assert dict(rviz.kwargs["remappings"]) == {
        f"/spatialoc/{t}": f"/robot1/spatialoc/{t}" for t in launch_module.RVIZ_TOPICS}

    assert of_kind(run_launch(launch_description, rviz="false"), "Node") == []


def test_rviz_takes_the_fixed_frame_of_a_built_map(launch_description, monkeypatch, tmp_path):
    monkeypatch.setitem(PREFIXES, "rviz2", "/opt/ros/jazzy")
    (tmp_path / "map.json").write_text(json.dumps({"frame_id": "odom"}))
    (rviz,) = of_kind(run_launch(launch_description, rviz="true", map=str(tmp_path)), "Node")
    assert rviz.kwargs["arguments"][-2:] == ["-f", "odom"]
    (rviz,) = of_kind(run_launch(launch_description, rviz="true", map="/no/such/map"), "Node")
    assert "-f" not in rviz.kwargs["arguments"], "a KITTI360Pose folder: the config's frame"


def node_publishers():
    """{message type name: (topic, QoS profile)} of the publishers the node creates, read
    from spatialoc_ros/ros/node.py."""
    tree = ast.parse(Path(node_module.__file__).read_text(encoding="utf-8"))
    found = {}
    for call in ast.walk(tree):
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and call.func.attr in ("create_publisher", "create_lifecycle_publisher")):
            msg_type, topic, qos = call.args[:3]
            found[msg_type.id] = (topic.value,
                                  getattr(node_module, qos.id) if isinstance(qos, ast.Name)
                                  else qos.value)
    return found


# RViz display -> the message type it shows.
RVIZ_DISPLAYS = {"rviz_default_plugins/PointCloud2": "PointCloud2",
                 "rviz_default_plugins/MarkerArray": "MarkerArray",
                 "rviz_default_plugins/PoseWithCovariance": "PoseWithCovarianceStamped"}
RVIZ_DURABILITY = {"TRANSIENT_LOCAL": "Transient Local", "VOLATILE": "Volatile"}


def test_rviz_config_shows_the_node_topics(launch_description, launch_module):
    doc = yaml.safe_load(RVIZ.read_text(encoding="utf-8"))
    manager = doc["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == PARAMETERS_BY_NAME["frame_id"].default
    assert manager["Global Options"]["Fixed Frame"] == "map"
    assert manager["Views"]["Current"]["Class"] in ("rviz_default_plugins/TopDownOrtho",
                                                    "rviz_default_plugins/Orbit")
    assert {p["Class"] for p in doc["Panels"]} >= {"rviz_common/Displays"}
    displays = {d["Class"]: d for d in manager["Displays"]}
    assert len(displays) == len(manager["Displays"]), "one display of each kind"
    assert set(displays) == set(RVIZ_DISPLAYS) | {"rviz_default_plugins/Grid"}
    assert all(d["Enabled"] and d["Name"] for d in displays.values())

    declared = {a.args[0]: a.kwargs for a in launch_description.args[0] if a.args}
    namespace = declared["namespace"]["default_value"]
    publishers = node_publishers()
    shown = []
    for cls, msg_type in RVIZ_DISPLAYS.items():
        topic, qos = publishers[msg_type]
        shown.append(topic)
        settings = displays[cls]["Topic"]
        assert settings["Value"] == f"/{namespace}/{topic}", cls
        assert settings["Durability Policy"] == RVIZ_DURABILITY[qos.durability.name], cls
        assert settings["Reliability Policy"] == qos.reliability.name.title(), cls
        assert settings["History Policy"] == "Keep Last" and settings["Depth"] >= 1, cls
    assert sorted(shown) == sorted(launch_module.RVIZ_TOPICS), "what rviz:=true remaps"
    assert all(publishers[t][1].durability.name == "TRANSIENT_LOCAL"
               for t in RVIZ_DISPLAYS.values()), "latched: RViz started later still sees them"

    cloud = displays["rviz_default_plugins/PointCloud2"]
    assert cloud["Color Transformer"] == "RGB8" and "rgb" in [f.name for f in FIELDS]
    assert cloud["Position Transformer"] == "XYZ"
    pose = displays["rviz_default_plugins/PoseWithCovariance"]
    assert pose["Covariance"]["Value"] and pose["Covariance"]["Position"]["Value"]
