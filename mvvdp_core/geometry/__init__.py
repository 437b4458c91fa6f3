"""Workspace, multi-view orthographic projection, heatmaps and back-projection."""

from mvvdp_core.geometry.workspace import VIEW_NAMES, VIEW_ROTATIONS, Workspace

__all__ = ["VIEW_NAMES", "VIEW_ROTATIONS", "Workspace"]
