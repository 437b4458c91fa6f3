"""Declaring node parameters with descriptors from one table.

Each entry is name -> (default, description) or (default, description, (low, high)); a range is enforced by
ROS for numeric parameters (an out-of-range value from a parameter file, `-p` or `ros2 param set` is refused).
Parameters are read-only (`ros2 param set` is refused) unless a node names them live and applies them with
`apply_live_parameters`: the node rebuilds its settings from the updated values (through the same validation
as at start-up) and a change that fails validation is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter

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
    node: Node, specs: dict[str, ParameterSpec], live: Collection[str] = ()
) -> dict[str, Any]:
    """Declare every parameter in specs (read-only unless named in live) and return their values."""
    unknown = set(live) - set(specs)
    if unknown:
        raise ValueError(f"live parameters not in the table: {sorted(unknown)}")
    values: dict[str, Any] = {}
    for name, (default, description, *bounds) in specs.items():
        desc = descriptor(default, description, bounds[0] if bounds else None, read_only=name not in live)
        values[name] = node.declare_parameter(name, default, desc).value
    return values


def apply_live_parameters(node: Node, values: dict[str, Any], live: Collection[str],
                          apply: Callable[[dict[str, Any]], None]) -> None:
    """Take `set_parameters` on the live parameters: apply(all values with the change) validates and swaps in
    the node's settings, raising ValueError or TypeError to refuse the change; `values` is then updated."""
    live = frozenset(live)

    def on_set(parameters: list[Parameter]) -> SetParametersResult:
        changed = {p.name: p.value for p in parameters}
        frozen = sorted(set(changed) - live)
        if frozen:
            return SetParametersResult(successful=False, reason=f"read-only: {', '.join(frozen)}")
        try:
            apply({**values, **changed})
        except (ValueError, TypeError) as err:
            return SetParametersResult(successful=False, reason=str(err))
        except Exception as err:  # noqa: BLE001 - never raise into rclpy's parameter service
            node.get_logger().error(f"applying {sorted(changed)} failed: {err!r}")
            return SetParametersResult(successful=False, reason=f"internal error: {err!r}")
        values.update(changed)
        node.get_logger().info(f"parameters set: {changed}")
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)
