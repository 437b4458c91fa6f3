"""Trained checkpoints that ship with the package (one folder each, the model's checkpoint format)."""

from __future__ import annotations

from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent
DEFAULT_SHIPPED = "pick_small"  # the small model trained on the simulated pick task (README rebuilds it)


def shipped_checkpoint(name: str = DEFAULT_SHIPPED) -> Path:
    """The folder of a shipped checkpoint; FileNotFoundError naming what ships when it is absent."""
    path = SHIPPED_DIR / name
    if not (path / "config.json").is_file():
        available = sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / "config.json").is_file())
        raise FileNotFoundError(f"no shipped checkpoint {name!r} in {SHIPPED_DIR} (available: {available})")
    return path
