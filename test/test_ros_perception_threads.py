"""The perception node takes its CPU thread budget from its parameters (torch_threads)."""

import os
import random
from pathlib import Path

import pytest
import torch
import yaml

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2 wheels) not installed")
pytest.importorskip("mvvdp_msgs.msg", reason="mvvdp_msgs not built (scripts/build_msgs.sh)")

from rclpy.parameter import Parameter  # noqa: E402

from mvvdp_ros.perception_node import PARAMETERS, PerceptionNode  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "config"


def test_config_sets_one_thread_and_the_table_bounds_it():
    config = yaml.safe_load((CONFIG / "perception.yaml").read_text())["/**/perception"]["ros__parameters"]
    assert config["torch_threads"] == 1
    default, _, bounds = PARAMETERS["torch_threads"]
    assert default == 1 and bounds[0] == 1


@pytest.mark.parametrize("threads", [1, 2])
def test_node_applies_torch_threads(threads):
    os.environ["ROS_DOMAIN_ID"] = str(random.randint(1, 200))
    before = torch.get_num_threads()
    rclpy.init()
    try:
        overrides = [
            Parameter("cameras_file", value=str(CONFIG / "cameras_sim.yaml")),
            Parameter("use_tf", value=False),
            Parameter("torch_threads", value=threads),
        ]
        node = PerceptionNode(parameter_overrides=overrides)
        try:
            assert torch.get_num_threads() == threads
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown()
        torch.set_num_threads(before)
