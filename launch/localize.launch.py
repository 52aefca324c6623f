"""Start the spatialoc_localizer node (a managed node that activates itself).

    ros2 launch spatialoc_ros localize.launch.py [namespace:=spatialoc] \
        [params_file:=...] [map:=DIR] [weights_dir:=DIR] [device:=auto|cpu|cuda] \
        [use_sim_time:=false]

Parameters come from ``params_file`` (default: the installed
config/localize.yaml); ``map``, ``weights_dir`` (default: the installed
weights) and ``device`` override it unless empty. Topics are relative, so they
appear under the namespace:
/spatialoc/query in, /spatialoc/pose, result, markers and map_cloud out.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

PACKAGE = "spatialoc_ros"
EXECUTABLE = "localizer"
NODE_NAME = "spatialoc_localizer"

# Launch argument -> node parameter it overrides when not empty.
OVERRIDES = {"map": "map_path", "weights_dir": "weights_dir", "device": "device"}


def localizer_node(context, *args, **kwargs):
    """The node, with the parameter overrides that were given on the command line."""
    def value(name):
        return LaunchConfiguration(name).perform(context)

    overrides = {param: value(arg) for arg, param in OVERRIDES.items() if value(arg)}
    overrides["use_sim_time"] = value("use_sim_time").lower() in ("true", "1", "yes")
    return [LifecycleNode(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=NODE_NAME,
        namespace=value("namespace"),
        parameters=[value("params_file"), overrides],
        output="screen",
        emulate_tty=True,
    )]


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("params_file",
                              default_value=os.path.join(share, "config", "localize.yaml"),
                              description="YAML file with the node's parameters"),
        DeclareLaunchArgument("namespace", default_value="spatialoc",
                              description="namespace of the node and its topics"),
        DeclareLaunchArgument("map", default_value="",
                              description="map folder (KITTI360Pose layout); empty: map_path of "
                                          "params_file"),
        DeclareLaunchArgument("weights_dir", default_value=os.path.join(share, "models"),
                              description="weights folder (default: the installed weights); "
                                          "empty: weights_dir of params_file"),
        DeclareLaunchArgument("device", default_value="",
                              description="auto, cpu or cuda; empty: device of params_file"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use the /clock topic (simulation) for stamps"),
        OpaqueFunction(function=localizer_node),
    ])
