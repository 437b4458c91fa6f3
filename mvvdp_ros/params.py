"""Declaring node parameters with descriptors from one table of (default, description)."""

from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node


def declare_parameters(node: Node, specs: dict[str, tuple[Any, str]]) -> dict[str, Any]:
    """Declare every parameter in specs (name -> (default, description)) and return their values."""
    values: dict[str, Any] = {}
    for name, (default, description) in specs.items():
        descriptor = ParameterDescriptor(description=description)
        values[name] = node.declare_parameter(name, default, descriptor).value
    return values
