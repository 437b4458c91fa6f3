"""Episodes as MCAP files with ROS 2 message schemas (`ros2 bag`, Foxglove), and back to episode folders.

One MCAP file holds one episode. Every step is a set of ROS 2 messages with the step's timestamp as their
log time and header stamp: per camera a `sensor_msgs/msg/PointCloud2` (x, y, z float32 + rgb, camera frame)
on `/mvvdp/record/<camera>/points`, the end-effector pose (`geometry_msgs/msg/PoseStamped`,
`/mvvdp/record/ee_pose`), the finger joints (`sensor_msgs/msg/JointState`, two fingers of half the width
each, `/mvvdp/record/gripper`) and the commanded gripper state (`std_msgs/msg/Bool`,
`/mvvdp/record/gripper_closed`); the camera extrinsics go once on `/tf_static` (`tf2_msgs/msg/TFMessage`).
The episode's metadata (task, base frame, cameras, success, ...) is an MCAP metadata record named
`mvvdp_episode`. The schemas are the interface definitions of the installed ROS 2 packages (their
share/<package>/msg/*.msg files), joined as rosbag2 writes them. No ROS import: `mcap` and
`mcap-ros2-support` encode and decode the messages.

`mcap_to_episode` rebuilds the episode folder (the training input) from such a file; steps' `extras` (the
scripted demonstrator's raw actions) are not carried.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from mvvdp_core.data.recorder import Recorder
from mvvdp_core.rotations import matrix_to_quaternion, quaternion_to_matrix
from mvvdp_core.step import CameraCloud, Step

TOPIC = "/mvvdp/record"
METADATA = "mvvdp_episode"
PRIMITIVES = {"bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32",
              "uint32", "int64", "uint64", "string", "wstring"}
# tf2_msgs ships with a full ROS install only; its one-field definition is spelled out here.
KNOWN = {"tf2_msgs/msg/TFMessage": "geometry_msgs/TransformStamped[] transforms\n"}
SEPARATOR = "=" * 80
POINT_FIELDS = [("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("rgb", 12, 7)]  # FLOAT32 = 7
POINT_DTYPE = np.dtype({"names": ["x", "y", "z", "rgb"], "formats": ["<f4"] * 4, "offsets": [0, 4, 8, 12],
                        "itemsize": 16})


def _share_dirs() -> list[Path]:
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    return [Path(p) / "share" for p in prefixes]


def _definition(name: str) -> str:
    """The .msg text of `pkg/msg/Type` from the installed packages."""
    if name in KNOWN:
        return KNOWN[name]
    package, _, message = name.split("/")
    for share in _share_dirs():
        path = share / package / "msg" / f"{message}.msg"
        if path.is_file():
            return path.read_text()
    raise FileNotFoundError(f"no interface definition for {name} (is its ROS 2 package installed?)")


def _dependencies(name: str, text: str) -> list[str]:
    package = name.split("/")[0]
    found = []
    for line in text.splitlines():
        tokens = line.split("#", 1)[0].split()
        if len(tokens) < 2 or "=" in tokens[1] or "=" in tokens[0]:
            continue  # blank, comment or constant
        base = re.sub(r"\[.*\]$", "", tokens[0])
        base = re.sub(r"<=\d+$", "", base)
        if base in PRIMITIVES:
            continue
        pkg, _, msg = base.rpartition("/")
        found.append(f"{pkg or package}/msg/{msg}")
    return found


def ros2_schema(name: str) -> str:
    """The full definition of `pkg/msg/Type`: its text, then each dependency's after a separator line."""
    text = _definition(name)
    parts, seen, queue = [text.rstrip("\n")], {name}, _dependencies(name, text)
    while queue:
        dep = queue.pop(0)
        if dep in seen:
            continue
        seen.add(dep)
        dep_text = _definition(dep)
        parts.append(f"{SEPARATOR}\nMSG: {dep}\n{dep_text.rstrip()}")
        queue += _dependencies(dep, dep_text)
    return "\n".join(parts) + "\n"


def _stamp(seconds: float) -> dict[str, int]:
    ns = int(round(seconds * 1e9))
    return {"sec": ns // 1_000_000_000, "nanosec": ns % 1_000_000_000}


def _seconds(stamp: Any) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def _xyz(values: Any) -> dict[str, float]:
    return dict(zip("xyz", map(float, values), strict=True))


def _pack_rgb(colors: np.ndarray) -> np.ndarray:
    c = colors.astype(np.uint32)
    return ((c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]).view(np.float32)


def next_mcap_path(root: str | os.PathLike[str]) -> Path:
    """root/episode_NNNNNN.mcap, numbered after the files already there."""
    root = Path(root)
    numbers = [int(m.group(1)) for p in root.glob("episode_*.mcap")
               if (m := re.fullmatch(r"episode_(\d{6})\.mcap", p.name))]
    return root / f"episode_{max(numbers, default=-1) + 1:06d}.mcap"


class McapEpisodeWriter:
    """Writes one episode's steps into an MCAP file (the EpisodeWriter interface: add_step, close)."""

    def __init__(self, path: str | os.PathLike[str], cameras: list[str], base_frame: str = "fr3_link0",
                 **meta: Any) -> None:
        from mcap_ros2.writer import Writer

        if not cameras:
            raise ValueError("an episode needs at least one camera name")
        self.root = Path(path)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.meta = {"cameras": list(cameras), "base_frame": base_frame, **meta}
        json.dumps(self.meta)  # fail early on values that cannot be stored
        self._file = open(self.root, "wb")  # noqa: SIM115 - closed in close()
        self._writer = Writer(self._file)
        names = ("sensor_msgs/msg/PointCloud2", "geometry_msgs/msg/PoseStamped", "sensor_msgs/msg/JointState",
                 "std_msgs/msg/Bool", "tf2_msgs/msg/TFMessage")
        self._schemas = {n: self._writer.register_msgdef(n, ros2_schema(n)) for n in names}
        self.num_steps = 0
        self._extrinsics_sent = False

    def _write(self, topic: str, schema: str, message: dict, stamp: float) -> None:
        ns = int(round(stamp * 1e9))
        self._writer.write_message(topic, self._schemas[schema], message, log_time=ns, publish_time=ns)

    def add_step(self, step: Step) -> int:
        base, t = self.meta["base_frame"], step.timestamp
        if not self._extrinsics_sent:
            transforms = []
            for camera, cloud in step.clouds.items():
                m = cloud.base_T_camera
                x, y, z, w = map(float, matrix_to_quaternion(m[:3, :3]))
                transforms.append({"header": {"stamp": _stamp(t), "frame_id": base},
                                   "child_frame_id": f"{camera}_record_frame",
                                   "transform": {"translation": _xyz(m[:3, 3]),
                                                 "rotation": {"x": x, "y": y, "z": z, "w": w}}})
            self._write("/tf_static", "tf2_msgs/msg/TFMessage", {"transforms": transforms}, t)
            self._extrinsics_sent = True
        for camera, cloud in step.clouds.items():
            points = np.zeros(len(cloud.points), POINT_DTYPE)
            for axis, column in zip("xyz", cloud.points.T, strict=True):
                points[axis] = column
            points["rgb"] = _pack_rgb(cloud.colors)
            msg = {"header": {"stamp": _stamp(t), "frame_id": f"{camera}_record_frame"}, "height": 1,
                   "width": len(points), "is_bigendian": False, "point_step": POINT_DTYPE.itemsize,
                   "row_step": POINT_DTYPE.itemsize * len(points), "is_dense": True, "data": points.tobytes(),
                   "fields": [{"name": n, "offset": o, "datatype": d, "count": 1}
                              for n, o, d in POINT_FIELDS]}
            self._write(f"{TOPIC}/{camera}/points", "sensor_msgs/msg/PointCloud2", msg, t)
        x, y, z, w = map(float, matrix_to_quaternion(step.ee_rotation))
        pose = {"position": _xyz(step.ee_position),
                "orientation": {"x": x, "y": y, "z": z, "w": w}}
        self._write(f"{TOPIC}/ee_pose", "geometry_msgs/msg/PoseStamped",
                    {"header": {"stamp": _stamp(t), "frame_id": base}, "pose": pose}, t)
        half = float(step.gripper_width) / 2
        self._write(f"{TOPIC}/gripper", "sensor_msgs/msg/JointState",
                    {"header": {"stamp": _stamp(t)}, "name": ["finger_joint1", "finger_joint2"],
                     "position": [half, half], "velocity": [], "effort": []}, t)
        self._write(f"{TOPIC}/gripper_closed", "std_msgs/msg/Bool", {"data": bool(step.gripper_closed)}, t)
        self.num_steps += 1
        return self.num_steps - 1

    def close(self, success: bool | None = None, **info: Any) -> None:
        if self._file.closed:
            return
        meta = {**self.meta, **info, "success": success, "num_steps": self.num_steps}
        self._writer.add_metadata(METADATA, {k: json.dumps(v) for k, v in meta.items()})
        self._writer.finish()
        self._file.close()

    def __enter__(self) -> McapEpisodeWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(success=None, interrupted=exc_type is not None)


def _unpack_cloud(msg: Any) -> tuple[np.ndarray, np.ndarray]:
    fields = {f.name: f.offset for f in msg.fields}
    if not {"x", "y", "z", "rgb"} <= set(fields) or msg.is_bigendian:
        raise ValueError(f"cloud fields {sorted(fields)} (big endian: {msg.is_bigendian}) are not x, y, z, "
                         f"rgb little endian")
    dtype = np.dtype({"names": ["x", "y", "z", "rgb"], "formats": ["<f4", "<f4", "<f4", "<u4"],
                      "offsets": [fields[k] for k in ("x", "y", "z", "rgb")], "itemsize": msg.point_step})
    data = np.frombuffer(bytes(msg.data), dtype, count=msg.width * msg.height)
    points = np.stack([data["x"], data["y"], data["z"]], axis=1)
    rgb = data["rgb"]
    colors = np.stack([(rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255], axis=1).astype(np.uint8)
    return points, colors


def mcap_to_episode(path: str | os.PathLike[str], out_root: str | os.PathLike[str]) -> Path:
    """Convert one MCAP episode into a new episode folder under out_root; returns the folder. A step missing
    one of its messages is refused with a ValueError naming it."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    steps: dict[int, dict[str, Any]] = defaultdict(dict)
    extrinsics: dict[str, np.ndarray] = {}
    with open(path, "rb") as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        meta = {}
        for record in reader.iter_metadata():
            if record.name == METADATA:
                meta = {k: json.loads(v) for k, v in record.metadata.items()}
        if not meta:
            raise ValueError(f"{path}: no {METADATA} metadata (not written by mvvdp)")
        for _schema, channel, message, decoded in reader.iter_decoded_messages():
            if channel.topic == "/tf_static":
                for tf in decoded.transforms:
                    r, t = tf.transform.rotation, tf.transform.translation
                    m = np.eye(4)
                    m[:3, :3] = quaternion_to_matrix(np.array([r.x, r.y, r.z, r.w]))
                    m[:3, 3] = [t.x, t.y, t.z]
                    extrinsics[tf.child_frame_id.removesuffix("_record_frame")] = m
            elif channel.topic.startswith(TOPIC + "/"):
                steps[message.log_time][channel.topic.removeprefix(TOPIC + "/")] = decoded
    cameras = meta["cameras"]
    episode_meta = {k: v for k, v in meta.items() if k not in ("cameras", "success", "num_steps")}
    writer = Recorder(out_root).start_episode(cameras, **episode_meta)
    try:
        for log_time in sorted(steps):
            parts = steps[log_time]
            needed = [f"{c}/points" for c in cameras] + ["ee_pose", "gripper", "gripper_closed"]
            missing = [n for n in needed if n not in parts]
            if missing:
                raise ValueError(f"{path}: step at {log_time * 1e-9:.9f} s lacks {missing}")
            clouds = {c: CameraCloud(*_unpack_cloud(parts[f"{c}/points"]), extrinsics[c]) for c in cameras}
            pose = parts["ee_pose"].pose
            q = pose.orientation
            writer.add_step(Step(clouds, [pose.position.x, pose.position.y, pose.position.z],
                                 quaternion_to_matrix(np.array([q.x, q.y, q.z, q.w])),
                                 float(sum(parts["gripper"].position)), bool(parts["gripper_closed"].data),
                                 _seconds(parts["ee_pose"].header.stamp)))
    except Exception:
        writer.close(success=None, interrupted=True)
        raise
    writer.close(success=meta.get("success"), converted_from=str(path))
    return writer.root
