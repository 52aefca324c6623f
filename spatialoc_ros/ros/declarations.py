"""The parameter table (:mod:`.parameters`) as ROS parameters: declared with descriptors, read
back.

Descriptors carry the description and numeric bounds, so a parameter tool can
show them and rclpy refuses out-of-range values. ``scenes`` is declared by type
(string array): an empty list has no type of its own in ROS, and unset means
"all scenes".
"""
from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter as RosParameter

from ..errors import SpatialocError
from .parameters import PARAMETERS, Settings


def descriptor(param) -> ParameterDescriptor:
    """A ParameterDescriptor with the description, the allowed strings and the bounds of
    ``param``."""
    text = param.description
    if param.choices:
        text += f" (one of: {', '.join(param.choices)})"
    d = ParameterDescriptor(description=text)
    if param.range is not None and isinstance(param.default, float):
        lo, hi = param.range
        d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi),
                                                     step=0.0)]
    elif (param.range is not None and isinstance(param.default, int)
          and not isinstance(param.default, bool)):
        lo, hi = param.range
        d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
    return d


def declare_parameters(node) -> None:
    """Declare every parameter of the table on ``node`` (overrides from --ros-args apply)."""
    for param in PARAMETERS:
        value = RosParameter.Type.STRING_ARRAY if param.default == [] else param.default
        node.declare_parameter(param.name, value, descriptor(param))


def read_settings(node) -> Settings:
    """The current parameter values as Settings; raises SpatialocError for a value outside its
    choices."""
    values = {}
    for param in PARAMETERS:
        try:
            values[param.name] = node.get_parameter(param.name).value
        except ParameterUninitializedException:  # an array left unset (or set to [])
            values[param.name] = param.default
        if param.choices and values[param.name] not in param.choices:
            raise SpatialocError(f"parameter {param.name}={values[param.name]!r}: expected one of "
                                 f"{', '.join(param.choices)}")
    return Settings.from_values(values)
