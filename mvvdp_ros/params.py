"""Declaring node parameters with descriptors from one table.

Each entry is name -> (default, description) or (default, description, (low, high)); a range is enforced by
ROS for numeric parameters (an out-of-range value from a parameter file or `-p` is refused at start-up).
"""

from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node

ParameterSpec = tuple[Any, str] | tuple[Any, str, tuple[float, float]]


def descriptor(default: Any, description: str, bounds: tuple[float, float] | None = None,
               read_only: bool = False) -> ParameterDescriptor:
    """A descriptor with the description and, for a numeric default, the allowed range."""
    result = ParameterDescriptor(description=description, read_only=read_only)
    if bounds is not None:
        low, high = bounds
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            raise ValueError(f"a range needs a numeric default, got {default!r}")
        if isinstance(default, int):
            result.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
        else:
            result.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high))]
    return result


def declare_parameters(
    node: Node, specs: dict[str, ParameterSpec], read_only: bool = False
) -> dict[str, Any]:
    """Declare every parameter in specs and return their values."""
    values: dict[str, Any] = {}
    for name, (default, description, *bounds) in specs.items():
        desc = descriptor(default, description, bounds[0] if bounds else None, read_only)
        values[name] = node.declare_parameter(name, default, desc).value
    return values
