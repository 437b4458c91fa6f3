"""Simulated Franka FR3 on a table with three fixed RGB-D cameras (MuJoCo, no ROS).

The arm is built from the published FR3 kinematics (modified Denavit-Hartenberg parameters, joint limits)
with capsule links, a parallel two-finger hand (0-0.08 m) and a few coloured cubes on the table. The base
frame fr3_link0 is the world origin; the table top is the plane z = TABLE_TOP_Z.

Control mirrors a Cartesian impedance controller: a target end-effector pose (position + quaternion xyzw)
is followed by a joint reference that moves towards it with damped-least-squares differential IK (rate
limited, so motion is a straight line at bounded speed), and stiff joint servos with gravity compensation
track that reference. The gripper takes a target width.

Cameras use the REP-103 body frame (x forward, y left, z up), like the ZED wrapper's
`<name>_left_camera_frame`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from xml.etree import ElementTree

os.environ.setdefault("MUJOCO_GL", "egl")  # off-screen on CPU (Mesa); osmesa is the fallback backend

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from mvvdp_core.cameras import CameraSpec  # noqa: E402
from mvvdp_core.geometry.workspace import Workspace  # noqa: E402
from mvvdp_core.rotations import (  # noqa: E402
    axis_quaternion,
    matrix_to_quaternion,
    rotation_error,
    wxyz_to_xyzw,
    xyzw_to_wxyz,
)

# Modified DH (Craig) per joint: (a_{i-1}, d_i, alpha_{i-1}); FR3 shares the Panda's values.
FR3_DH: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.333, 0.0),
    (0.0, 0.0, -math.pi / 2),
    (0.0, 0.316, math.pi / 2),
    (0.0825, 0.0, math.pi / 2),
    (-0.0825, 0.384, -math.pi / 2),
    (0.0, 0.0, math.pi / 2),
    (0.088, 0.0, math.pi / 2),
)
FLANGE_D = 0.107  # flange along link 7's z axis
HAND_YAW = -math.pi / 4  # hand mounted on the flange rotated by -45 deg about z
TCP_OFFSET = 0.1034  # fingertip centre point along the hand's z axis
FR3_JOINT_LIMITS: tuple[tuple[float, float], ...] = (
    (-2.7437, 2.7437),
    (-1.7837, 1.7837),
    (-2.9007, 2.9007),
    (-3.0421, -0.1518),
    (-2.8065, 2.8065),
    (0.5445, 4.5169),
    (-3.0159, 3.0159),
)
FR3_TORQUE_LIMITS: tuple[float, ...] = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)
HOME_Q: tuple[float, ...] = (0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4)
MAX_GRIPPER_WIDTH = 0.08
TABLE_TOP_Z = 0.0
TABLE_HEIGHT = 0.76
CAMERA_NAMES: tuple[str, ...] = ("zed_front", "zed_left", "zed_right")
SCENE_ASSET = Path(__file__).with_name("assets") / "fr3_table.xml"  # installed as package data

# Rotation from the MuJoCo camera frame (x right, y up, looking along -z) to the body frame
# (x forward, y left, z up): columns are the body axes expressed in MuJoCo camera coordinates.
CAM_FROM_BODY = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])

OBJECT_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.85, 0.15, 0.15),
    (0.15, 0.7, 0.2),
    (0.15, 0.3, 0.9),
    (0.95, 0.8, 0.1),
    (0.7, 0.2, 0.8),
)


@dataclass(frozen=True)
class SimConfig:
    width: int = 320
    height: int = 240
    num_objects: int = 3
    cube_half: float = 0.025
    timestep: float = 0.002
    max_linear_speed: float = 0.3  # m/s of the joint reference's Cartesian motion
    max_angular_speed: float = 1.5  # rad/s
    ik_damping: float = 0.05
    cameras: tuple[CameraSpec, ...] | None = None  # None: default_cameras(Workspace())
    # Cube placement on reset: centre x and y ranges (base frame, metres) and the largest |yaw| (radians).
    object_region: tuple[tuple[float, float], tuple[float, float]] = ((0.35, 0.7), (-0.3, 0.3))
    object_max_yaw: float = math.pi

    def __post_init__(self) -> None:
        for key in ("width", "height"):
            value = getattr(self, key)
            if int(value) != value or not 16 <= value <= 2048:
                raise ValueError(f"camera {key} must be an integer in [16, 2048], got {value!r}")
        if not 0 <= self.num_objects <= len(OBJECT_COLORS):
            raise ValueError(f"num_objects must be in [0, {len(OBJECT_COLORS)}], got {self.num_objects}")
        for key in ("timestep", "max_linear_speed", "max_angular_speed", "ik_damping", "cube_half"):
            value = getattr(self, key)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be a positive number, got {value!r}")
        region = np.asarray(self.object_region, dtype=np.float64)
        if region.shape != (2, 2) or not np.isfinite(region).all() or np.any(region[:, 0] > region[:, 1]):
            raise ValueError(f"object_region must be ((x_min, x_max), (y_min, y_max)), "
                             f"got {self.object_region!r}")
        if not 0 <= self.object_max_yaw <= math.pi:
            raise ValueError(f"object_max_yaw must be in [0, pi] radians, got {self.object_max_yaw!r}")


def default_cameras(workspace: Workspace | None = None) -> tuple[CameraSpec, ...]:
    """Front, left and right cameras 1.3 m from the workspace centre, raised, looking at its lower half."""
    workspace = workspace or Workspace()
    cx, cy, cz = workspace.center
    target = (cx, cy, cz - 0.25 * workspace.edge)
    reach, height = 1.3 * workspace.edge, cz + 0.45 * workspace.edge
    return (
        CameraSpec.looking_at(CAMERA_NAMES[0], (cx + reach, cy, height), target),
        CameraSpec.looking_at(CAMERA_NAMES[1], (cx, cy + reach, height), target),
        CameraSpec.looking_at(CAMERA_NAMES[2], (cx, cy - reach, height), target),
    )


def _fmt(values: np.ndarray | tuple[float, ...]) -> str:
    return " ".join(f"{float(v):.9g}" for v in values)


def _axis_quat_wxyz(axis: str, angle: float) -> np.ndarray:
    """MuJoCo (wxyz) quaternion of a rotation about a base axis."""
    return xyzw_to_wxyz(axis_quaternion(axis, angle))


def _mujoco_camera_quat(base_R_camera: np.ndarray) -> np.ndarray:
    """MuJoCo (wxyz) orientation of a camera whose body frame (x forward, y left, z up) is base_R_camera."""
    # MuJoCo's camera axes: x right (= -y), y up (= z), looking along -z (so z = -x); a signed permutation
    # of columns, exact in floating point.
    mat = np.stack([-base_R_camera[:, 1], base_R_camera[:, 2], -base_R_camera[:, 0]], axis=1)
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, mat.reshape(-1))
    return quat


def build_mjcf(config: SimConfig, cameras: tuple[CameraSpec, ...]) -> str:
    """MJCF text of the scene: the asset (FR3 arm, hand, table) with its parameters, the cubes and cameras."""
    contact = {  # nearly hard contacts for fingers and cubes (time constant = 2 physics steps)
        "solref": f"{2 * config.timestep:.6g} 1",
        "solimp": "0.95 0.99 0.001",
    }
    text = Template(SCENE_ASSET.read_text()).substitute(
        timestep=config.timestep, width=config.width, height=config.height, contact_solref=contact["solref"]
    )
    root = ElementTree.fromstring(text)
    world = root.find("worldbody")
    assert world is not None
    h = config.cube_half
    for k in range(config.num_objects):
        position = f"{0.4 + 0.1 * k} 0 {TABLE_TOP_Z + h}"
        body = ElementTree.SubElement(world, "body", name=f"object{k}", pos=position)
        ElementTree.SubElement(body, "freejoint", name=f"object{k}_free")
        ElementTree.SubElement(
            body, "geom", name=f"object{k}", type="box", size=f"{h} {h} {h}",
            rgba=_fmt((*OBJECT_COLORS[k], 1.0)), mass="0.05", friction="1.2 0.01 0.001", condim="4",
            contype="1", conaffinity="3", **contact,
        )  # fmt: skip
    for cam in cameras:
        quat = _mujoco_camera_quat(cam.base_T_camera[:3, :3])
        ElementTree.SubElement(
            world, "camera", name=cam.name, pos=_fmt(cam.position), quat=_fmt(quat), fovy=str(cam.fovy_deg)
        )
    return ElementTree.tostring(root, encoding="unicode")


def _check_pose(position: np.ndarray, quat_xyzw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    position = np.asarray(position, dtype=np.float64)
    quat_xyzw = np.asarray(quat_xyzw, dtype=np.float64)
    if position.shape != (3,):
        raise ValueError(f"target position must have shape (3,), got {position.shape}")
    if quat_xyzw.shape != (4,):
        raise ValueError(f"target quaternion must have shape (4,) as xyzw, got {quat_xyzw.shape}")
    if not np.all(np.isfinite(position)):
        raise ValueError(f"target position must be finite, got {position}")
    if not np.all(np.isfinite(quat_xyzw)):
        raise ValueError(f"target quaternion must be finite, got {quat_xyzw}")
    norm = float(np.linalg.norm(quat_xyzw))
    if abs(norm - 1.0) > 1e-3:
        raise ValueError(f"target quaternion must be unit length (xyzw), got norm {norm:.6f}")
    return position, quat_xyzw / norm


class FrankaSim:
    """MuJoCo FR3 + gripper + cubes + three RGB-D cameras. Base frame fr3_link0 = world origin."""

    def __init__(self, config: SimConfig | None = None, workspace: Workspace | None = None) -> None:
        config = config or SimConfig()
        workspace = workspace or Workspace()
        self.config = config
        self.workspace = workspace
        self.cameras = config.cameras if config.cameras is not None else default_cameras(workspace)
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")
        self.model = mujoco.MjModel.from_xml_string(build_mjcf(config, self.cameras))
        self.data = mujoco.MjData(self.model)
        self._ik_data = mujoco.MjData(self.model)
        m = self.model
        self._arm_qpos = np.array([m.jnt_qposadr[m.joint(f"fr3_joint{i}").id] for i in range(1, 8)])
        self._arm_dof = np.array([m.jnt_dofadr[m.joint(f"fr3_joint{i}").id] for i in range(1, 8)])
        self._finger_qpos = np.array([m.jnt_qposadr[m.joint(f"fr3_finger_joint{j}").id] for j in (1, 2)])
        self._arm_act = np.array([m.actuator(f"act_joint{i}").id for i in range(1, 8)])
        self._finger_act = np.array([m.actuator(f"act_finger{j}").id for j in (1, 2)])
        self._tcp = m.site("tcp").id
        robot_root = m.body("fr3_link0").id
        self._robot_body = np.array([m.body_rootid[b] == robot_root for b in range(m.nbody)])
        self._limits = np.array(FR3_JOINT_LIMITS)
        self._objects = [m.body(f"object{k}").id for k in range(config.num_objects)]
        self._object_qpos = [m.jnt_qposadr[m.joint(f"object{k}_free").id] for k in range(config.num_objects)]
        self._renderer: mujoco.Renderer | None = None
        self._jacp = np.zeros((3, m.nv))
        self._jacr = np.zeros((3, m.nv))
        self.reset(0)

    # ---- state ---------------------------------------------------------------------------------------------
    @property
    def timestep(self) -> float:
        return float(self.model.opt.timestep)

    @property
    def time(self) -> float:
        """Simulated seconds since the last reset."""
        return float(self.data.time)

    def reset(self, seed: int | None = None, first_object_xy: Sequence[float] | None = None) -> None:
        """Home the arm, open the gripper and scatter the cubes on the table (reproducible for a seed); with
        `first_object_xy` the first cube (the pick task's target) stands there, inside the object region."""
        rng = np.random.default_rng(seed)
        (x_min, x_max), (y_min, y_max) = self.config.object_region
        if first_object_xy is not None:
            first = np.asarray(first_object_xy, dtype=np.float64)
            if first.shape != (2,) or not (np.isfinite(first).all() and x_min <= first[0] <= x_max
                                           and y_min <= first[1] <= y_max):
                raise ValueError(f"first_object_xy must be an (x, y) inside the object region "
                                 f"{self.config.object_region}, got {first_object_xy!r}")
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._arm_qpos] = HOME_Q
        self.data.qpos[self._finger_qpos] = MAX_GRIPPER_WIDTH / 2
        placed: list[np.ndarray] = []
        h = self.config.cube_half
        for k, adr in enumerate(self._object_qpos):
            for _ in range(1000):
                # Drawn even when replaced: the seed's yaws and other cubes stay as without it.
                xy = np.array([rng.uniform(x_min, x_max), rng.uniform(y_min, y_max)])
                if k == 0 and first_object_xy is not None:
                    xy = first
                if all(np.linalg.norm(xy - p) > 6 * h for p in placed):
                    break
            else:
                raise RuntimeError("could not place the objects without overlap")
            placed.append(xy)
            yaw = rng.uniform(-self.config.object_max_yaw, self.config.object_max_yaw)
            self.data.qpos[adr : adr + 3] = (xy[0], xy[1], TABLE_TOP_Z + h)
            self.data.qpos[adr + 3 : adr + 7] = _axis_quat_wxyz("z", yaw)
        self.data.ctrl[self._arm_act] = HOME_Q
        self.data.ctrl[self._finger_act] = MAX_GRIPPER_WIDTH / 2
        mujoco.mj_forward(self.model, self.data)
        self._q_ref = np.array(HOME_Q, dtype=np.float64)
        pos, quat = self.ee_pose()
        self._target_pos, self._target_quat = pos, quat
        self._target_width = MAX_GRIPPER_WIDTH

    def joint_positions(self) -> np.ndarray:
        """(7,) arm joint angles in radians."""
        return self.data.qpos[self._arm_qpos].copy()

    def gripper_finger_positions(self) -> np.ndarray:
        """(2,) finger joint positions in metres; their sum is the opening width."""
        return self.data.qpos[self._finger_qpos].copy()

    def gripper_width(self) -> float:
        """Metres between the fingers (contact penetration can push the joints a hair below 0: read as 0)."""
        return max(float(self.data.qpos[self._finger_qpos].sum()), 0.0)

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Fingertip centre point in the base frame: position (3,) and quaternion xyzw (4,)."""
        return self._site_pose(self.data)

    def _site_pose(self, data: mujoco.MjData) -> tuple[np.ndarray, np.ndarray]:
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, data.site_xmat[self._tcp])
        return data.site_xpos[self._tcp].copy(), wxyz_to_xyzw(quat)

    def forward_kinematics(self, joint_positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fingertip pose (position (3,), quaternion xyzw (4,)) of the model for (7,) arm joint angles."""
        q = np.asarray(joint_positions, dtype=np.float64)
        if q.shape != (7,) or not np.all(np.isfinite(q)):
            raise ValueError(f"joint positions must be 7 finite angles, got {q!r}")
        d = mujoco.MjData(self.model)
        d.qpos[self._arm_qpos] = q
        mujoco.mj_kinematics(self.model, d)
        return self._site_pose(d)

    def object_poses(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per cube: centre position (3,) and quaternion xyzw (4,) in the base frame."""
        return {
            self.model.body(b).name: (self.data.xpos[b].copy(), wxyz_to_xyzw(self.data.xquat[b]))
            for b in self._objects
        }

    def contact_wrench(self) -> np.ndarray:
        """(6,) net force (N) and torque about the fingertip centre (N m) that the table and the objects apply
        on the arm and hand, base frame: what a torque-sensing arm estimates as its external wrench (zero in
        free space)."""
        wrench = np.zeros(6)
        contact_wrench = np.zeros(6)
        tcp = self.data.site_xpos[self._tcp]
        for i in range(self.data.ncon):
            contact = self.data.contact[i]
            on_robot = self._robot_body[self.model.geom_bodyid[[contact.geom1, contact.geom2]]]
            if on_robot[0] == on_robot[1]:
                continue  # inside the robot (fingers on each other) or between other bodies
            mujoco.mj_contactForce(self.model, self.data, i, contact_wrench)
            # Contact frame rows: normal (geom1 -> geom2) and tangents; the force acts on geom2.
            force = contact.frame.reshape(3, 3).T @ contact_wrench[:3]
            force = force if on_robot[1] else -force
            wrench[:3] += force
            wrench[3:] += np.cross(contact.pos - tcp, force)
        return wrench

    # ---- control -------------------------------------------------------------------------------------------
    def set_target_pose(self, position: np.ndarray, quat_xyzw: np.ndarray) -> None:
        """Target end-effector pose (base frame); ValueError for bad shapes, NaN or a non-unit quaternion."""
        self._target_pos, self._target_quat = _check_pose(position, quat_xyzw)

    def set_gripper_width(self, width: float) -> None:
        """Target opening in metres in [0, 0.08] (up to 1 mm beyond is clipped); ValueError otherwise."""
        width = float(width)
        if not np.isfinite(width):
            raise ValueError(f"gripper width must be finite, got {width}")
        if not -1e-3 <= width <= MAX_GRIPPER_WIDTH + 1e-3:
            raise ValueError(f"gripper width must be in [0, {MAX_GRIPPER_WIDTH}] m, got {width}")
        self._target_width = float(np.clip(width, 0.0, MAX_GRIPPER_WIDTH))

    def step(self, n: int = 1) -> None:
        """Advance n physics steps (timestep seconds each), updating the joint reference before each."""
        if int(n) != n or n < 0:
            raise ValueError(f"step count must be a non-negative integer, got {n!r}")
        self.data.ctrl[self._finger_act] = self._target_width / 2
        for _ in range(int(n)):
            self._update_reference()
            self.data.ctrl[self._arm_act] = self._q_ref
            mujoco.mj_step(self.model, self.data)

    def _update_reference(self) -> None:
        """One damped-least-squares step of the joint reference towards the target pose, rate limited."""
        m, d = self.model, self._ik_data
        d.qpos[self._arm_qpos] = self._q_ref
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        pos, quat = self._site_pose(d)
        dt = self.timestep
        err_pos = self._target_pos - pos
        err_rot = rotation_error(self._target_quat, quat)
        err_pos *= min(1.0, self.config.max_linear_speed * dt / max(np.linalg.norm(err_pos), 1e-12))
        err_rot *= min(1.0, self.config.max_angular_speed * dt / max(np.linalg.norm(err_rot), 1e-12))
        mujoco.mj_jacSite(m, d, self._jacp, self._jacr, self._tcp)
        jac = np.vstack([self._jacp[:, self._arm_dof], self._jacr[:, self._arm_dof]])
        lam2 = self.config.ik_damping**2
        jjt_inv = np.linalg.inv(jac @ jac.T + lam2 * np.eye(6))
        dq = jac.T @ jjt_inv @ np.concatenate([err_pos, err_rot])
        # Nullspace pull towards the home posture keeps the redundant joint away from its limits.
        nullspace = np.eye(7) - jac.T @ jjt_inv @ jac
        dq += nullspace @ (np.asarray(HOME_Q) - self._q_ref) * (0.5 * dt)
        margin = 0.02
        self._q_ref = np.clip(self._q_ref + dq, self._limits[:, 0] + margin, self._limits[:, 1] - margin)

    # ---- cameras -------------------------------------------------------------------------------------------
    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    def camera_extrinsics(self) -> dict[str, np.ndarray]:
        """base_T_camera (4, 4) per camera, camera frame = body frame (x forward, y left, z up)."""
        out = {}
        for name in self.camera_names:
            cam = self.model.camera(name).id
            pose = np.eye(4)
            pose[:3, :3] = self.data.cam_xmat[cam].reshape(3, 3) @ CAM_FROM_BODY
            pose[:3, 3] = self.data.cam_xpos[cam]
            out[name] = pose
        return out

    def camera_intrinsics(self, name: str) -> tuple[float, float, float]:
        """(focal length in pixels, cx, cy) of a camera's pinhole image."""
        fovy = math.radians(float(self.model.camera(name).fovy[0]))
        focal = 0.5 * self.config.height / math.tan(fovy / 2)
        return focal, self.config.width / 2, self.config.height / 2

    def _get_renderer(self) -> mujoco.Renderer:
        if self._renderer is None:
            try:
                self._renderer = mujoco.Renderer(self.model, self.config.height, self.config.width)
            except Exception as err:
                backend = os.environ.get("MUJOCO_GL")
                raise RuntimeError(
                    f"off-screen rendering failed with MUJOCO_GL={backend}: {err}. Set MUJOCO_GL=egl "
                    "(Mesa EGL) or MUJOCO_GL=osmesa with PYOPENGL_PLATFORM=osmesa (libosmesa6) before "
                    "mujoco is imported"
                ) from err
            flags = self._renderer.scene.flags
            flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
        return self._renderer

    def render_clouds(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per camera (in camera_names order): points (H, W, 3) float32 in the camera body frame, NaN where
        nothing was hit, and colours (H, W, 3) uint8."""
        renderer = self._get_renderer()
        h, w = self.config.height, self.config.width
        far = 0.999 * self.model.vis.map.zfar * self.model.stat.extent
        cols = np.arange(w) + 0.5
        rows = np.arange(h) + 0.5
        out = []
        for name in self.camera_names:
            renderer.update_scene(self.data, camera=name)
            renderer.disable_depth_rendering()
            rgb = renderer.render().copy()
            renderer.enable_depth_rendering()
            depth = renderer.render().astype(np.float64)
            renderer.disable_depth_rendering()
            focal, cx, cy = self.camera_intrinsics(name)
            depth[depth >= far] = np.nan
            # MuJoCo renders with row 0 at the top; depth is along the viewing axis (body x).
            left = -(cols[None, :] - cx) / focal * depth
            up = -(rows[:, None] - cy) / focal * depth
            points = np.stack([depth, left, up], axis=-1).astype(np.float32)
            out.append((points, rgb))
        return out

    def close(self) -> None:
        """Free the off-screen GL context."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> FrankaSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def camera_config_entries(sim: FrankaSim) -> list[dict[str, object]]:
    """The cameras as the perception node's YAML lists them: name, topic, frame_id, translation, rotation."""
    entries = []
    specs = {camera.name: camera for camera in sim.cameras}
    for name, pose in sim.camera_extrinsics().items():
        xyzw = matrix_to_quaternion(pose[:3, :3])  # w >= 0
        entries.append(
            {
                "name": name,
                "topic": specs[name].topic,
                "frame_id": specs[name].frame_id,
                "translation": [round(float(v), 6) for v in pose[:3, 3]],
                "rotation": [round(float(v), 6) for v in xyzw],
            }
        )
    return entries
