"""The shared parameter table: descriptions, ranges enforced by ROS, read-only flags, overrides."""

import os
import random

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2 wheels) not installed")

from rclpy.exceptions import InvalidParameterValueException  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from mvvdp_ros.params import declare_parameters, descriptor  # noqa: E402

SPECS = {"rate": (5.0, "Hz", (0.1, 60.0)), "width": (320, "pixels", (16, 2048)), "topic": ("/x", "a topic")}


@pytest.fixture(scope="module", autouse=True)
def ros():
    os.environ["ROS_DOMAIN_ID"] = str(random.randint(1, 200))
    rclpy.init()
    yield
    rclpy.shutdown()


def test_values_ranges_and_read_only() -> None:
    node = Node("params_defaults")
    try:
        assert declare_parameters(node, SPECS) == {"rate": 5.0, "width": 320, "topic": "/x"}
        rate = node.describe_parameter("rate")
        assert rate.read_only and rate.floating_point_range[0].to_value == 60.0
        assert node.describe_parameter("width").integer_range[0].from_value == 16
        assert not node.describe_parameter("topic").integer_range
    finally:
        node.destroy_node()


def test_override_out_of_range_is_refused_and_in_range_taken() -> None:
    bad = Node("params_bad", parameter_overrides=[Parameter("width", value=4)])
    try:
        with pytest.raises(InvalidParameterValueException):
            declare_parameters(bad, SPECS)
    finally:
        bad.destroy_node()
    good = Node("params_good", parameter_overrides=[Parameter("rate", value=2.0)])
    try:
        assert declare_parameters(good, SPECS)["rate"] == 2.0
    finally:
        good.destroy_node()


def test_range_needs_a_numeric_default() -> None:
    with pytest.raises(ValueError, match="numeric default"):
        descriptor("/x", "a topic", (0, 1))


def test_live_names_must_be_in_the_table() -> None:
    node = Node("params_live")
    try:
        with pytest.raises(ValueError, match="not in the table"):
            declare_parameters(node, SPECS, live=("rates",))
        declare_parameters(node, SPECS, live=("rate",))
        assert not node.describe_parameter("rate").read_only and node.describe_parameter("width").read_only
    finally:
        node.destroy_node()
