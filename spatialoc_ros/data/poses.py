"""Query positions along the drive and their descriptions (README.md, "The synthetic city")."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import numpy as np
from scipy.spatial import cKDTree

from . import constants as C
from .cells import SceneIndex, build_cell
from .describe import describe_in_pose_cell, ground_in_best_cell
from .schema import Cell, Pose


def make_poses(
    index: SceneIndex,
    cells: Sequence[Cell],
    locations: np.ndarray,
    rng: np.random.Generator,
    progress: Optional[Callable[[int], None]] = None,
) -> List[Pose]:
    """Describe every location ``POSE_COUNT`` times, each copy shifted 0-14 m towards +x/+y.

    A copy is rejected when its nearest cell centre is more than 15 m away, when its
    pose cell is empty, or when any strategy finds fewer than six objects in reach.
    Strategies that ground to the same set of best-cell objects are kept once.
    """
    if not cells:
        return []
    centers = np.stack([c.center_w for c in cells])
    tree = cKDTree(centers)
    half = C.CELL_SIZE / 2
    poses: List[Pose] = []
    for location in locations:
        for _ in range(C.POSE_COUNT):
            loc = location.copy()
            loc[:2] += np.floor(rng.random(2) * C.POSE_SHIFT_SCALE)
            pose = _describe_copy(index, cells, tree, loc, half)
            poses.extend(pose)
        if progress is not None:
            progress(1)
    return poses


def _describe_copy(index, cells, tree, loc, half) -> List[Pose]:
    dist, nearest = tree.query(loc)
    if dist > half:
        return []
    best = cells[int(nearest)]
    pose_cell = build_cell(index, np.concatenate([loc - half, loc + half]), "pose_-0001",
                           best.scene)
    if pose_cell is None:
        return []
    pose_in_pose_cell = pose_cell.to_cell(loc)
    described = []
    for strategy in C.DESCRIBE_STRATEGIES:
        hints = describe_in_pose_cell(pose_cell, pose_in_pose_cell, strategy)
        if hints is None:
            return []  # the whole copy is rejected, as in the original generator
        described.append((strategy, hints))
    pose_in_cell = best.to_cell(loc)
    out, seen = [], []
    for strategy, hints in described:
        grounded = ground_in_best_cell(hints, best, pose_in_cell)
        matched = sorted(h.object_id for h in grounded if h.is_matched)
        if matched in seen:
            continue
        seen.append(matched)
        out.append(Pose(pose_in_cell, loc.copy(), best.id, best.scene, grounded, strategy))
    return out
