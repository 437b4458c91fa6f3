"""Workspace, multi-view orthographic projection, heatmaps and back-projection."""

from mvvdp_core.geometry.backproject import BackProjection, backproject_heatmaps
from mvvdp_core.geometry.clouds import merge_clouds, transform_points
from mvvdp_core.geometry.heatmaps import colorize_heatmaps, decolorize_heatmaps, ee_heatmaps
from mvvdp_core.geometry.projection import ProjectedViews, project_views, project_views_torch
from mvvdp_core.geometry.workspace import VIEW_NAMES, VIEW_ROTATIONS, Workspace

__all__ = [
    "VIEW_NAMES",
    "VIEW_ROTATIONS",
    "BackProjection",
    "ProjectedViews",
    "Workspace",
    "backproject_heatmaps",
    "colorize_heatmaps",
    "decolorize_heatmaps",
    "ee_heatmaps",
    "merge_clouds",
    "project_views",
    "project_views_torch",
    "transform_points",
]
