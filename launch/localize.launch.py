"""Start the spatialoc_localizer node (a managed node that activates itself).

    ros2 launch spatialoc_ros localize.launch.py [namespace:=spatialoc] \
        [params_file:=...] [map:=DIR] [weights_dir:=DIR] [device:=auto|cpu|cuda] \
        [use_sim_time:=false] [rviz:=false] [rviz_config:=FILE]

Parameters come from ``params_file`` (default: the installed
config/localize.yaml); ``map``, ``weights_dir`` (default: the installed
weights) and ``device`` override it unless empty. Topics are relative, so they
appear under the namespace:
/spatialoc/query in, /spatialoc/pose, result, markers and map_cloud out.

``rviz:=true`` also starts RViz2 with ``rviz_config`` (default: the installed
config/spatialoc.rviz: the map cloud, the markers and the pose with its
covariance in Fixed Frame ``map``; for a map built in another frame, given as
``map:=``, RViz starts with that frame as its Fixed Frame). Its topics are those of the default
namespace; with another ``namespace`` they are remapped to it. Where RViz2 is
not installed, one line says so and the node starts alone.
"""
import json
import os

from ament_index_python.packages import (PackageNotFoundError, get_package_prefix,
                                         get_package_share_directory)
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

PACKAGE = "spatialoc_ros"
EXECUTABLE = "localizer"
NODE_NAME = "spatialoc_localizer"
DEFAULT_NAMESPACE = "spatialoc"
RVIZ_PACKAGE = "rviz2"
# The node's topics that config/spatialoc.rviz shows (under DEFAULT_NAMESPACE).
RVIZ_TOPICS = ("map_cloud", "markers", "pose")

# Launch argument -> node parameter it overrides when not empty.
OVERRIDES = {"map": "map_path", "weights_dir": "weights_dir", "device": "device"}


def is_true(text):
    return text.strip().lower() in ("true", "1", "yes")


def topic(namespace, name):
    """The absolute name of topic ``name`` under ``namespace`` ("robot1/spatialoc", "/", "")."""
    return "/" + "/".join(p for p in namespace.split("/") + [name] if p)


def localizer_node(context, *args, **kwargs):
    """The node, with the parameter overrides that were given on the command line."""
    def value(name):
        return LaunchConfiguration(name).perform(context)

    overrides = {param: value(arg) for arg, param in OVERRIDES.items() if value(arg)}
    overrides["use_sim_time"] = is_true(value("use_sim_time"))
    return [LifecycleNode(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=NODE_NAME,
        namespace=value("namespace"),
        parameters=[value("params_file"), overrides],
        output="screen",
        emulate_tty=True,
    )]


def rviz_installed():
    """Whether RViz2 is installed (launch_ros finds executables through the ament index)."""
    try:
        get_package_prefix(RVIZ_PACKAGE)
    except PackageNotFoundError:
        return False
    return True


def built_map_frame(map_dir):
    """The frame a map built by 'spatialoc map build' publishes in (its map.json), else None."""
    try:
        with open(os.path.join(map_dir, "map.json")) as f:
            frame = json.load(f).get("frame_id")
    except (OSError, ValueError, AttributeError):
        return None
    return frame if isinstance(frame, str) and frame else None


def rviz_node(context, *args, **kwargs):
    """With rviz:=true, RViz2 showing the node's topics; a log line where it is not installed."""
    def value(name):
        return LaunchConfiguration(name).perform(context)

    if not is_true(value("rviz")):
        return []
    if not rviz_installed():
        return [LogInfo(msg=f"rviz:=true, but RViz is not installed (no package "
                            f"{RVIZ_PACKAGE}): starting the localizer without it")]
    namespace = value("namespace")
    remappings = [(topic(DEFAULT_NAMESPACE, t), topic(namespace, t)) for t in RVIZ_TOPICS
                  if topic(DEFAULT_NAMESPACE, t) != topic(namespace, t)]
    frame = built_map_frame(value("map"))
    return [Node(
        package=RVIZ_PACKAGE,
        executable="rviz2",
        name="rviz2",
        arguments=["-d", value("rviz_config")] + (["-f", frame] if frame else []),
        parameters=[{"use_sim_time": is_true(value("use_sim_time"))}],
        remappings=remappings,
        output="screen",
    )]


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("params_file",
                              default_value=os.path.join(share, "config", "localize.yaml"),
                              description="YAML file with the node's parameters"),
        DeclareLaunchArgument("namespace", default_value=DEFAULT_NAMESPACE,
                              description="namespace of the node and its topics"),
        DeclareLaunchArgument("map", default_value="",
                              description="map folder (KITTI360Pose layout or built by "
                                          "'spatialoc map build'); empty: map_path of "
                                          "params_file"),
        DeclareLaunchArgument("weights_dir", default_value=os.path.join(share, "models"),
                              description="weights folder (default: the installed weights); "
                                          "empty: weights_dir of params_file"),
        DeclareLaunchArgument("device", default_value="",
                              description="auto, cpu or cuda; empty: device of params_file"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use the /clock topic (simulation) for stamps"),
        DeclareLaunchArgument("rviz", default_value="false",
                              description="also start RViz2 (when installed)"),
        DeclareLaunchArgument("rviz_config",
                              default_value=os.path.join(share, "config", "spatialoc.rviz"),
                              description="RViz2 config file for rviz:=true"),
        OpaqueFunction(function=localizer_node),
        OpaqueFunction(function=rviz_node),
    ])
