"""The rig's cameras: one description shared by perception (calibration file, ROS topics) and simulation.

A camera's frame is the REP-103 body frame of the ZED wrapper's `<name>_left_camera_frame`: x forward (the
viewing direction), y left, z up. base_T_camera maps that frame into the robot base frame (metres).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mvvdp_core.rotations import look_at_rotation


def zed_topic(name: str) -> str:
    """The ZED ROS 2 wrapper's registered cloud topic of a camera called `name`."""
    return f"/{name}/zed_node/point_cloud/cloud_registered"


def zed_frame(name: str) -> str:
    """The ZED ROS 2 wrapper's cloud frame of a camera called `name`."""
    return f"{name}_left_camera_frame"


@dataclass(frozen=True)
class CameraSpec:
    """One camera: its name, cloud topic and frame id, base_T_camera (4, 4), and the vertical field of view
    in degrees (used where the camera is simulated)."""

    name: str
    topic: str
    frame_id: str
    base_T_camera: np.ndarray
    fovy_deg: float = 60.0

    @classmethod
    def looking_at(
        cls, name: str, position: Sequence[float], target: Sequence[float], fovy_deg: float = 60.0
    ) -> CameraSpec:
        """A ZED-named camera at `position` looking at `target` (base frame) with the base z axis up in
        its image."""
        pose = np.eye(4)
        pose[:3, :3] = look_at_rotation(position, target)
        pose[:3, 3] = np.asarray(position, dtype=np.float64)
        return cls(name, zed_topic(name), zed_frame(name), pose, fovy_deg)

    @property
    def position(self) -> np.ndarray:
        """(3,) camera origin in the base frame."""
        return self.base_T_camera[:3, 3]
