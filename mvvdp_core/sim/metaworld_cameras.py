"""Three fixed RGB-D cameras in a Meta-World scene, giving camera-frame clouds like the robot's ZED cameras.

Points are returned in each camera's body frame (REP-103: x forward, y left, z up), with base_T_camera in the
Meta-World world frame, so the recorded episodes look exactly like the real robot's and go through the same
geometry code.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from mvvdp_core.step import CameraCloud


@dataclass(frozen=True)
class FreeCameraSpec:
    """A MuJoCo free camera: looks at lookat from distance, azimuth/elevation in degrees."""

    name: str
    lookat: tuple[float, float, float]
    distance: float
    azimuth: float
    elevation: float


# Facing the robot from across the table, and from its left and right front corners.
METAWORLD_CAMERAS: tuple[FreeCameraSpec, ...] = (
    FreeCameraSpec("zed_front", (0.0, 0.65, 0.15), 1.5, -90.0, -35.0),
    FreeCameraSpec("zed_left", (0.0, 0.65, 0.15), 1.4, -25.0, -35.0),
    FreeCameraSpec("zed_right", (0.0, 0.65, 0.15), 1.4, -155.0, -35.0),
)


class RGBDCameras:
    """Renders RGB and metric depth from fixed free cameras and lifts them to camera-frame clouds."""

    def __init__(
        self,
        model: mujoco.MjModel,
        resolution: int = 128,
        specs: tuple[FreeCameraSpec, ...] = METAWORLD_CAMERAS,
        max_depth: float = 3.0,
    ) -> None:
        if resolution < 8:
            raise ValueError(f"camera resolution must be >= 8 pixels, got {resolution}")
        self.model = model
        self.resolution = resolution
        self.specs = specs
        self.max_depth = max_depth
        self._rgb = mujoco.Renderer(model, resolution, resolution)
        self._depth = mujoco.Renderer(model, resolution, resolution)
        self._depth.enable_depth_rendering()
        self._cameras = []
        for spec in specs:
            cam = mujoco.MjvCamera()
            cam.type = mujoco.mjtCamera.mjCAMERA_FREE
            cam.lookat[:] = spec.lookat
            cam.distance = spec.distance
            cam.azimuth = spec.azimuth
            cam.elevation = spec.elevation
            self._cameras.append(cam)
        focal = (resolution / 2) / np.tan(np.deg2rad(model.vis.global_.fovy) / 2)
        centres = np.arange(resolution) + 0.5 - resolution / 2
        cols, rows = np.meshgrid(centres, centres)
        # Per pixel: (left, up) offsets per metre of forward depth.
        self._left_per_depth = (-cols / focal).astype(np.float32)
        self._up_per_depth = (-rows / focal).astype(np.float32)

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.specs]

    def _extrinsics(self, renderer: mujoco.Renderer) -> np.ndarray:
        gl_cam = renderer.scene.camera[0]
        forward = np.asarray(gl_cam.forward, dtype=np.float64)
        up = np.asarray(gl_cam.up, dtype=np.float64)
        forward /= np.linalg.norm(forward)
        up = up - forward * (up @ forward)
        up /= np.linalg.norm(up)
        left = np.cross(up, forward)
        base_T_camera = np.eye(4)
        base_T_camera[:3, :3] = np.stack([forward, left, up], axis=1)
        base_T_camera[:3, 3] = np.asarray(gl_cam.pos, dtype=np.float64)
        return base_T_camera

    def render(self, data: mujoco.MjData) -> dict[str, CameraCloud]:
        """One CameraCloud per camera (organised, far/no-return pixels dropped)."""
        clouds: dict[str, CameraCloud] = {}
        for spec, cam in zip(self.specs, self._cameras, strict=True):
            self._rgb.update_scene(data, camera=cam)
            self._rgb.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            self._rgb.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            colors = self._rgb.render()
            self._depth.update_scene(data, camera=cam)
            depth = self._depth.render().astype(np.float32)
            depth[~(depth < self.max_depth)] = np.nan
            points = np.stack([depth, depth * self._left_per_depth, depth * self._up_per_depth], axis=-1)
            clouds[spec.name] = CameraCloud(points, colors.copy(), self._extrinsics(self._rgb))
        return clouds

    def close(self) -> None:
        self._rgb.close()
        self._depth.close()
