"""spatialoc_ros: text-to-point-cloud localization (SpatiaLoc) as a ROS 2 package.

Everything except :mod:`spatialoc_ros.ros` imports and runs without rclpy.
"""
# The generated message module (``spatialoc_ros.msg``) is installed into the
# virtualenv's site-packages under a folder of the same name as this package.
# Extending the search path lets Python see both halves of the package.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
