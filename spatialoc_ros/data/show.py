"""A top-down picture of one scene: object points by class, the cell grid, poses and hints.

Meant as a quick look at a dataset folder (real or synthetic): are the
objects where the cells are, do the poses follow the streets, do the hint
lines point at the right objects. Points are subsampled per object and in
total so a scene of a few hundred cells renders in seconds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..atomic import save_figure
from .constants import CLASS_NAMES
from .schema import Cell, Pose

POINTS_PER_OBJECT = 48  # points kept per object and cell
MAX_POINTS = 150_000  # points drawn in total
HINT_LINE_POSES = 5  # poses whose matched hints are drawn as lines

# One fixed colour per class, so pictures of different scenes compare at a glance.
_PALETTE = [
    "#d62728", "#17becf", "#ff7f0e", "#e377c2", "#8c564b", "#bcbd22", "#9467bd", "#ffbb78",
    "#1f77b4", "#aec7e8", "#f7b6d2", "#7f7f7f", "#c7c7c7", "#c49c94", "#393b79", "#ad494a",
    "#e7ba52", "#637939", "#843c39", "#2ca02c", "#98df8a",
]
CLASS_COLORS: Dict[str, str] = dict(zip(CLASS_NAMES, _PALETTE))
UNKNOWN_CLASS_COLOR = "#000000"


def world_points(cells: Sequence[Cell], rng: np.random.Generator,
                 per_object: int = POINTS_PER_OBJECT, max_points: int = MAX_POINTS):
    """Subsampled world xy of every object point, with the class label of each point."""
    xy, labels = [], []
    for cell in cells:
        for obj in cell.objects:
            pts = np.asarray(obj.xyz, dtype=np.float64)
            if len(pts) == 0:
                continue
            if len(pts) > per_object:
                pts = pts[rng.choice(len(pts), per_object, replace=False)]
            xy.append(cell.to_world(pts[:, :2]))
            labels.append(np.full(len(pts), obj.label, dtype=object))
    if not xy:
        return np.zeros((0, 2)), np.zeros(0, dtype=object)
    xy, labels = np.concatenate(xy), np.concatenate(labels)
    if len(xy) > max_points:
        keep = rng.choice(len(xy), max_points, replace=False)
        xy, labels = xy[keep], labels[keep]
    return xy, labels


def hint_segments(poses: Sequence[Pose], cells_by_id: Dict[str, Cell],
                  count: int = HINT_LINE_POSES):
    """Line segments (world xy) from a few evenly spread poses to their matched hinted objects."""
    if not poses or count <= 0:
        return []
    picks = np.unique(np.linspace(0, len(poses) - 1, min(count, len(poses))).round().astype(int))
    segments = []
    for i in picks:
        pose = poses[i]
        cell = cells_by_id.get(pose.cell_id)
        if cell is None:
            continue
        for hint in pose.hints:
            oid = hint.object_id
            if not hint.is_matched or oid is None or not 0 <= oid < len(cell.objects):
                continue
            centre = cell.to_world(cell.objects[oid].center[:2])
            segments.append([np.asarray(pose.pose_w[:2], dtype=np.float64), centre])
    return segments


def render_scene(cells: Sequence[Cell], poses: Sequence[Pose], out, title: str,
                 seed: int = 0, hint_poses: int = HINT_LINE_POSES) -> Path:
    """Draw cells, objects, poses and hint lines top-down into a PNG at ``out``; return its
    path."""
    # A bare Figure on the Agg canvas: no pyplot, so no global backend or figure state is touched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    rng = np.random.default_rng(seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(10, 10), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    _draw_cells(ax, cells, LineCollection)
    classes = _draw_points(ax, *world_points(cells, rng))
    has_lines = _draw_poses(ax, poses, {c.id: c for c in cells}, hint_poses, LineCollection)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x (m, east)")
    ax.set_ylabel("y (m, north)")
    ax.set_title(title)
    handles = _legend_handles(Line2D, classes, bool(poses), has_lines)
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                  frameon=False)
    save_figure(fig, out, bbox_inches="tight")
    return out


def _draw_cells(ax, cells: Sequence[Cell], line_collection) -> None:
    outlines = []
    for cell in cells:
        x0, y0, _, x1, y1, _ = np.asarray(cell.bbox_w, dtype=np.float64)
        outlines.append([(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)])
    if outlines:
        ax.add_collection(line_collection(outlines, colors="0.75", linewidths=0.4, zorder=1))
        ax.autoscale_view()


def _draw_points(ax, xy: np.ndarray, labels: np.ndarray) -> List[str]:
    """Scatter the points class by class (benchmark class order); return the classes drawn."""
    present = set(labels.tolist())
    order = [c for c in CLASS_NAMES if c in present] + sorted(present - set(CLASS_NAMES))
    for name in order:
        sel = labels == name
        ax.scatter(xy[sel, 0], xy[sel, 1], s=1.0, c=_class_color(name), linewidths=0,
                   rasterized=True, zorder=2)
    return order


def _class_color(name: str) -> str:
    return CLASS_COLORS.get(name, UNKNOWN_CLASS_COLOR)


def _legend_handles(line2d, classes: Sequence[str], has_poses: bool, has_lines: bool) -> list:
    """Legend entries with readable marker sizes (the scatter points themselves are tiny)."""
    handles = [line2d([], [], ls="", marker="o", ms=5, color=_class_color(c), label=c)
               for c in classes]
    if has_poses:
        handles.append(line2d([], [], ls="", marker="^", ms=6, mfc="red", mec="black", mew=0.5,
                              label="pose"))
    if has_lines:
        handles.append(line2d([], [], color="black", lw=0.9, label="matched hint"))
    return handles


def _draw_poses(ax, poses: Sequence[Pose], cells_by_id: Dict[str, Cell], hint_poses: int,
                line_collection) -> bool:
    """Pose markers, and hint lines for a few poses; return whether any line was drawn."""
    if not poses:
        return False
    segments = hint_segments(poses, cells_by_id, hint_poses)
    if segments:
        ax.add_collection(line_collection(segments, colors="black", linewidths=1.0, zorder=5))
    xy = np.array([np.asarray(p.pose_w, dtype=np.float64)[:2] for p in poses])
    ax.scatter(xy[:, 0], xy[:, 1], s=9, marker="^", c="red", edgecolors="black", linewidths=0.3,
               zorder=4)
    return bool(segments)


def _cells_subset(cells: List[Cell], poses: List[Pose], max_cells: Optional[int]):
    """The first ``max_cells`` cells (by id) and the poses whose best cell is among them."""
    if max_cells is None or max_cells >= len(cells):
        return cells, poses
    kept = sorted(cells, key=lambda c: c.id)[:max(0, max_cells)]
    ids = {c.id for c in kept}
    return kept, [p for p in poses if p.cell_id in ids]


def show_scene(root, scene: str, out, max_cells: Optional[int] = None, seed: int = 0) -> Path:
    """Load one scene of a KITTI360Pose folder and render it (see :func:`render_scene`)."""
    from . import kitti360pose
    from .stats import require_dataset_dir

    require_dataset_dir(root)
    full = kitti360pose.resolve_scene(scene, kitti360pose.available_scenes(root))
    data = kitti360pose.load_scene(root, full)
    cells, poses = _cells_subset(list(data.cells), list(data.poses), max_cells)
    n_objects = sum(len(c.objects) for c in cells)
    title = f"{full}: {len(cells)} cells, {len(poses)} poses, {n_objects} objects"
    return render_scene(cells, poses, out, title, seed=seed)
