"""Dataset sampling and SE(3) augmentation on a synthetic recorded scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mvvdp_core.actions import euler_to_bins
from mvvdp_core.data.augment import AugmentConfig, rotation_z, sample_scene_transform, transform_poses
from mvvdp_core.data.dataset import EpisodeDataset, SampleConfig, frame_indices
from mvvdp_core.data.episode import list_episodes
from mvvdp_core.data.recorder import Recorder
from mvvdp_core.geometry.workspace import Workspace
from mvvdp_core.rotations import euler_to_matrix
from mvvdp_core.step import CameraCloud, Step

WORKSPACE = Workspace(center=(0.5, 0.0, 0.4), edge=1.0, resolution=64)
RED = np.array([255, 0, 0], dtype=np.uint8)


def camera_pose(yaw: float, position: tuple[float, float, float]) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = rotation_z(yaw)
    pose[:3, 3] = position
    return pose


def scene_step(t: int, ee: np.ndarray, rot: np.ndarray, closed: bool) -> Step:
    """Grey table points and a red blob (the gripper) around ee, seen by two cameras."""
    rng = np.random.default_rng(t)
    table = np.stack([rng.uniform(0.1, 0.9, 3000), rng.uniform(-0.4, 0.4, 3000), np.full(3000, 0.05)], 1)
    blob = ee + rng.normal(scale=0.006, size=(400, 3))
    clouds = {}
    poses = {"cam_a": camera_pose(0.3, (-0.5, 0.2, 0.8)), "cam_b": camera_pose(-1.2, (0.4, 1.0, 0.6))}
    for name, pose in poses.items():
        inv = np.linalg.inv(pose)
        pts = np.concatenate([table, blob])
        cols = np.concatenate([np.full((3000, 3), 128, np.uint8), np.tile(RED, (400, 1))])
        clouds[name] = CameraCloud((pts @ inv[:3, :3].T + inv[:3, 3]).astype(np.float32), cols, pose)
    return Step(clouds, ee, rot, 0.0 if closed else 0.08, closed, 0.1 * t)


@pytest.fixture(scope="module")
def episode_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("episodes")
    writer = Recorder(root).start_episode(["cam_a", "cam_b"])
    for t in range(6):
        ee = np.array([0.45 + 0.03 * t, -0.05 + 0.02 * t, 0.30 - 0.02 * t])
        rot = euler_to_matrix(np.array([0.0, 0.0, np.deg2rad(10.0 * t)]))
        writer.add_step(scene_step(t, ee, rot, closed=t >= 3))
    writer.close(success=True)
    return root


def red_centroids(rgb: torch.Tensor) -> torch.Tensor:
    """(V, 3, H, W) views -> (V, 2) (column, row) centroids of red pixels, in pixel-centre units."""
    red = (rgb[:, 0] > 0.9) & (rgb[:, 1] < 0.1) & (rgb[:, 2] < 0.1)
    out = []
    for mask in red:
        rows, cols = torch.nonzero(mask, as_tuple=True)
        assert len(rows) > 0, "gripper blob not visible"
        out.append(torch.stack([cols.float().mean(), rows.float().mean()]) + 0.5)
    return torch.stack(out)


def heatmap_peaks(heat: torch.Tensor) -> torch.Tensor:
    """(V, H, W) -> (V, 2) (column, row) of each map's maximum, in pixel-centre units."""
    flat = heat.flatten(1).argmax(1)
    width = heat.shape[-1]
    return torch.stack([flat % width, flat // width], 1).float() + 0.5


def test_frame_indices_pad_the_tail() -> None:
    np.testing.assert_array_equal(frame_indices(3, 6, 4, 1), [3, 4, 5, 5, 5])
    np.testing.assert_array_equal(frame_indices(0, 10, 3, 2), [0, 2, 4, 6])
    with pytest.raises(IndexError):
        frame_indices(6, 6, 4, 1)


def test_sample_targets_without_augmentation(episode_dir: Path) -> None:
    episodes = list_episodes(episode_dir)
    data = EpisodeDataset(episodes, SampleConfig(workspace=WORKSPACE, future_frames=4))
    assert len(data) == 6
    sample = data[3]  # steps 3, 4, 5, 5, 5
    assert sample["rgb"].shape == (5, 3, 3, 64, 64) and sample["heatmap"].shape == (5, 3, 64, 64)
    expected = episodes[0].ee_positions()[[3, 4, 5, 5, 5]]
    np.testing.assert_allclose(sample["positions"].numpy(), expected, atol=1e-6)
    # Relative yaw of 10, 20, 20, 20 degrees -> bins 36 + 2, 36 + 4 (5 degrees per bin, bin 36 = 0).
    np.testing.assert_array_equal(sample["rotation_bins"][:, 2].numpy(), [38, 40, 40, 40])
    np.testing.assert_array_equal(sample["rotation_bins"][:, :2].numpy(), np.full((4, 2), 36))
    np.testing.assert_array_equal(sample["gripper"].numpy(), [0, 0, 0, 0, 0])
    np.testing.assert_array_equal(data[0]["gripper"].numpy(), [1, 1, 1, 0, 0])
    torch.testing.assert_close(heatmap_peaks(sample["heatmap"][0]), red_centroids(sample["rgb"][0]), atol=1.5,
                               rtol=0)


def test_augmented_heatmap_peak_stays_on_the_augmented_gripper(episode_dir: Path) -> None:
    episodes = list_episodes(episode_dir)
    plain = EpisodeDataset(episodes, SampleConfig(workspace=WORKSPACE, future_frames=4))
    augment = AugmentConfig(max_yaw_deg=30.0, max_translation=0.1)
    config = SampleConfig(workspace=WORKSPACE, future_frames=4, augment=augment)
    data = EpisodeDataset(episodes, config, seed=3)
    reference = plain[1]
    for _ in range(3):
        sample = data[1]
        moved = float((sample["positions"] - reference["positions"]).abs().max())
        assert moved > 0.01, "augmentation left the scene in place"
        assert bool(WORKSPACE.contains(sample["positions"]).all())
        for f in (0, 2, 4):
            torch.testing.assert_close(heatmap_peaks(sample["heatmap"][f]), red_centroids(sample["rgb"][f]),
                                       atol=1.5, rtol=0)
        rot = sample["rotations"].double()
        eye = torch.eye(3, dtype=torch.float64).expand(5, 3, 3)
        torch.testing.assert_close(rot @ rot.transpose(1, 2), eye, atol=1e-6, rtol=0)
        assert torch.allclose(torch.linalg.det(rot), torch.ones(5, dtype=torch.float64), atol=1e-6)
        # Relative rotations are invariant under a rigid motion of the whole scene.
        torch.testing.assert_close(sample["rotation_bins"], reference["rotation_bins"])


def test_sampled_transform_keeps_positions_inside_and_is_rigid() -> None:
    rng = np.random.default_rng(0)
    config = AugmentConfig(max_yaw_deg=45.0, max_translation=0.2, margin=0.05)
    near_face = np.array([[0.5, 0.0, 0.86], [0.5, 0.0, -0.06]])  # 4 cm from top and bottom: no room
    assert np.array_equal(sample_scene_transform(rng, near_face, WORKSPACE, config), np.eye(4))
    inside = np.array([[0.5, 0.0, 0.4], [0.6, 0.1, 0.5]])
    lower, upper = WORKSPACE.lower + 0.05, WORKSPACE.upper - 0.05
    for _ in range(50):
        transform = sample_scene_transform(rng, inside, WORKSPACE, config)
        rotations = np.stack([euler_to_matrix(rng.uniform(-3, 3, 3)) for _ in range(2)])
        positions, moved = transform_poses(transform, inside, rotations)
        assert np.all((positions >= lower) & (positions <= upper))
        np.testing.assert_allclose(moved @ moved.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (2, 3, 3)),
                                   atol=1e-9)
        np.testing.assert_allclose(np.linalg.det(moved), 1.0, atol=1e-9)
        np.testing.assert_allclose(transform[2, :3], [0, 0, 1])  # rotation about z only
    with pytest.raises(ValueError, match="NaN"):
        sample_scene_transform(rng, np.array([[np.nan, 0, 0]]), WORKSPACE, config)
    with pytest.raises(ValueError, match="max_yaw_deg"):
        AugmentConfig(max_yaw_deg=-1.0)
    assert int(euler_to_bins(np.array(0.0))) == 36


def test_episode_leaving_the_workspace_is_named(episode_dir: Path) -> None:
    episodes = list_episodes(episode_dir)
    EpisodeDataset(episodes, SampleConfig(workspace=WORKSPACE, future_frames=4))  # x 0.45..0.60 fits
    narrow = Workspace(center=(0.3, 0.0, 0.4), edge=0.56, resolution=64)  # x <= 0.58: only step 5 (0.60) out
    with pytest.raises(ValueError, match=r"outside the workspace cube .*step 5 at \[0\.6") as error:
        EpisodeDataset(episodes, SampleConfig(workspace=narrow, future_frames=4))
    assert str(episodes[0].root) in str(error.value)
