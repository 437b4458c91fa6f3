"""Core fault handling without ROS: chunk validation, the stop latch, step-count and cloud limits."""

import numpy as np
import pytest

from mvvdp_core.cameras import CameraSpec
from mvvdp_core.execution import ChunkChecks, ChunkExecutor, ExecutorConfig, TimedChunk, validate_chunk
from mvvdp_core.model.flow import MAX_INFERENCE_STEPS, check_num_steps, inference_sigmas
from mvvdp_core.perception import CloudFrame, CloudSynchronizer, SyncConfig
from mvvdp_core.safety import PoseTarget

HOME = np.array([0.4, 0.0, 0.4])
DOWN = np.array([1.0, 0.0, 0.0, 0.0])


def chunk(chunk_id: int = 1, stamp: float = 10.0, offset: float = 0.03) -> TimedChunk:
    positions = HOME + np.linspace(0, offset, 24)[:, None] * [0.0, 1.0, 0.0]
    return TimedChunk(chunk_id, stamp, positions, np.tile(DOWN, (24, 1)), np.ones(24),
                      np.linspace(0.1, 2.4, 24))


def test_validate_chunk_names_the_first_problem() -> None:
    checks = ChunkChecks(min_step_confidence=0.05)
    good, conf = chunk(), np.full(24, 0.5)
    assert validate_chunk(good, "fr3_link0", conf, checks) == ""
    assert "frame" in validate_chunk(good, "world", conf, checks)
    nan = chunk()
    nan.positions[7, 2] = np.nan
    assert "positions not finite at step 7" in validate_chunk(nan, "fr3_link0", conf, checks)
    far = chunk(offset=2.0)
    assert "outside the workspace" in validate_chunk(far, "fr3_link0", conf, checks)
    low = conf.copy()
    low[3] = 0.01
    assert "step 3 confidence" in validate_chunk(good, "fr3_link0", low, checks)
    assert "step confidences" in validate_chunk(good, "fr3_link0", conf[:5], checks)
    bad_quat = chunk()
    bad_quat.quaternions[0] = [0.0, 0.0, 0.0, 2.0]
    assert "unit length" in validate_chunk(bad_quat, "fr3_link0", conf, checks)


def executor(mode: str) -> ChunkExecutor:
    core = ChunkExecutor(ExecutorConfig(mode=mode, max_chunk_age=2.0))
    core.update_state(PoseTarget(HOME.copy(), DOWN.copy(), 1.0), 10.0)
    core.heartbeat(10.0)
    return core


def test_stop_latches_auto_chunks_until_resume() -> None:
    core = executor("auto")
    core.offer(chunk(1, stamp=10.0), "auto", 10.0)
    assert core.running is not None
    core.stop(10.1)
    assert core.running is None and core.stopped
    core.offer(chunk(2, stamp=10.1), "auto", 10.2)
    assert core.running is None and core.dropped_while_stopped == 1
    assert core.tick(10.2, 0.05).state == "hold"
    core.resume(10.3)
    core.offer(chunk(3, stamp=10.3), "auto", 10.3)
    assert core.running is not None and core.running.chunk_id == 3


def test_preview_approval_resumes_after_stop() -> None:
    core = executor("preview")
    core.stop(10.0)
    core.offer(chunk(5, stamp=10.0), "pending", 10.0)
    ok, message = core.approve(5, True, 10.1)
    assert ok and "resumed" in message and not core.stopped


def test_reject_cancels_the_running_chunk_and_holds() -> None:
    core = executor("auto")
    core.offer(chunk(1, stamp=10.0), "auto", 10.0)
    core.reject(2, "bad", 10.1)
    assert core.running is None and core.rejected_chunks == 1
    command = core.tick(10.1, 0.05)
    assert command.state == "hold" and "chunk 2 rejected" in command.reason


def test_step_counts_are_bounded() -> None:
    assert check_num_steps(5) == 5
    for bad in (0, -1, MAX_INFERENCE_STEPS + 1, 10**9, 2.5, True):
        with pytest.raises(ValueError):
            check_num_steps(bad)
    with pytest.raises(ValueError):
        inference_sigmas(10**9, 5.0)


def test_clouds_need_usable_points_and_a_bounded_size() -> None:
    camera = CameraSpec("cam", "/cam", "cam_frame", np.eye(4))
    sync = CloudSynchronizer([camera], SyncConfig(max_age=1.0, max_points=100))
    colors = np.zeros((50, 3), np.uint8)
    far = CloudFrame("cam", 0.0, "cam_frame", np.full((50, 3), 1e30, np.float32), colors)
    assert "usable" in sync.add(far, 0.0)
    swapped = np.random.default_rng(0).uniform(1.0, 2.0, (50, 3)).astype("<f4").view(">f4").astype(np.float32)
    assert "usable" in sync.add(CloudFrame("cam", 0.0, "cam_frame", swapped, colors), 0.0)
    big = CloudFrame("cam", 0.0, "cam_frame", np.ones((101, 3), np.float32), np.zeros((101, 3), np.uint8))
    assert "max_points" in sync.add(big, 0.0)
    mixed = np.ones((50, 3), np.float32)
    mixed[:5] = 1e30
    assert sync.add(CloudFrame("cam", 0.0, "cam_frame", mixed, colors), 0.0) is None
    assert len(sync.latest["cam"].points) == 45
