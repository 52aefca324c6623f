"""Describing a position with hints, as the KITTI360Pose generator does.

A position is described in its *pose cell* (a cube centred on it): the six
hinted objects are chosen among the objects whose closest point lies within
15 m, by one of three strategies, and each hint gets a direction word and a
colour word. The hints are then grounded in the *best cell* (the grid cell
whose centre is nearest), where the same objects are looked up again.
The procedure is summarised in README.md, "The synthetic city".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import constants as C
from .schema import Cell, Hint, Object3d


def direction_word(pose_xy, closest_xy) -> str:
    """Where the pose lies relative to an object (+x east, +y north); cell-normalised units."""
    v = np.asarray(pose_xy, dtype=np.float64)[:2] - np.asarray(closest_xy, dtype=np.float64)[:2]
    if np.linalg.norm(v) < C.ON_TOP_DIST:
        return "on-top"
    if abs(v[0]) <= abs(v[1]):
        return "north" if v[1] >= 0 else "south"
    return "east" if v[0] >= 0 else "west"


@dataclass
class PoseCellHint:
    """A hint as first described in the pose cell (before grounding)."""

    obj: Object3d
    color_rgb: np.ndarray
    color_text: str
    direction: str
    offset_center: np.ndarray
    offset_closest: np.ndarray
    closest_point: np.ndarray


def _describe(obj: Object3d, pose: np.ndarray) -> PoseCellHint:
    closest = obj.closest_point(pose)
    return PoseCellHint(
        obj=obj,
        color_rgb=obj.color_rgb,
        color_text=obj.color_text,
        direction=direction_word(pose, closest),
        offset_center=pose[:2] - obj.center[:2],
        offset_closest=pose[:2] - closest[:2],
        closest_point=closest[:2].copy(),
    )


def _round_robin(items: List[PoseCellHint], key, count: int) -> List[PoseCellHint]:
    """First member of every group, then the second of every group, ... (groups by first
    appearance)."""
    groups: Dict[str, List[PoseCellHint]] = {}
    for it in items:
        groups.setdefault(key(it), []).append(it)
    chosen: List[PoseCellHint] = []
    depth = 0
    while len(chosen) < count and any(len(g) > depth for g in groups.values()):
        for g in groups.values():
            if len(g) > depth and len(chosen) < count:
                chosen.append(g[depth])
        depth += 1
    return chosen


def describe_in_pose_cell(
    pose_cell: Cell, pose: np.ndarray, strategy: str, num: int = C.NUM_MENTIONED
) -> Optional[List[PoseCellHint]]:
    """Choose and describe ``num`` objects of the pose cell, or None if fewer are in reach."""
    dists = [np.linalg.norm(o.closest_point(pose) - pose) for o in pose_cell.objects]
    candidates = [o for o, d in zip(pose_cell.objects, dists) if d <= C.MAX_HINT_DIST]
    if len(candidates) < num:
        return None
    described = [_describe(o, pose) for o in candidates]
    if strategy == "closest":
        order = np.argsort([np.linalg.norm(o.closest_point(pose) - pose) for o in candidates],
                           kind="stable")
        chosen = [described[i] for i in order[:num]]
    elif strategy == "class":
        chosen = _round_robin(described, lambda h: h.obj.label, num)
    elif strategy == "direction":
        chosen = _round_robin(described, lambda h: h.direction, num)
    else:
        raise ValueError(f"unknown describe strategy {strategy!r}")
    return chosen if len(chosen) == num else None


def ground_in_best_cell(hints: List[PoseCellHint], best: Cell,
                        pose_in_cell: np.ndarray) -> List[Hint]:
    """Find each hinted object again in the best cell (same instance id, nearest closest-point
    offset)."""
    matched_ids: set = set()
    out: List[Hint] = []
    for h in hints:
        hint = Hint(
            object_instance_id=int(h.obj.instance_id),
            object_label=h.obj.label,
            object_color_rgb=h.color_rgb,
            object_color_text=h.color_text,
            direction=h.direction,
            offset_center=h.offset_center,
            offset_closest=h.offset_closest,
            closest_point=h.closest_point,
            is_matched=False,
        )
        candidates = [
            o for o in best.objects
            if o.instance_id == h.obj.instance_id and o.id not in matched_ids
        ]
        best_match: Optional[Tuple[float, Object3d, np.ndarray]] = None
        for o in candidates:
            closest = o.closest_point(pose_in_cell)
            diff = np.linalg.norm((pose_in_cell[:2] - closest[:2]) - h.offset_closest)
            if best_match is None or diff < best_match[0]:
                best_match = (diff, o, closest)
        if best_match is not None and best_match[0] <= C.MATCH_TOLERANCE:
            _, o, closest = best_match
            matched_ids.add(o.id)
            hint.is_matched = True
            hint.object_id = int(o.id)
            hint.closest_point = closest[:2].copy()
            hint.best_offset_center = pose_in_cell[:2] - o.center[:2]
            hint.best_offset_closest = pose_in_cell[:2] - closest[:2]
        out.append(hint)
    return out
