"""The benchmark's records as plain dataclasses.

Units follow KITTI360Pose (README.md, "Data"): object points are
*cell-normalised*, ``(p_world - cell.bbox_w[:3]) / cell.cell_size``, in all
three axes; a pose carries both its world position (m) and its position
normalised in its best cell; hint offsets are cell-normalised xy differences.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from .constants import COLOR_CENTERS, COLOR_NAMES, PAD_LABEL


def color_name(rgb) -> str:
    """Name of the colour centre nearest (L2) to a mean rgb in [0, 1]."""
    d = np.linalg.norm(COLOR_CENTERS - np.asarray(rgb, dtype=np.float64)[None, :], axis=1)
    return COLOR_NAMES[int(np.argmin(d))]


@dataclass
class Object3d:
    """One object inside one cell (or one scene object, in world coordinates)."""

    id: int  # index within the cell; -1 for padding
    instance_id: int  # KITTI-360 instance id; repeats when stuff is split by clustering
    label: str  # one of constants.CLASS_NAMES, or "pad"
    xyz: np.ndarray  # float64 [N, 3]
    rgb: np.ndarray  # float32 [N, 3], in [0, 1]

    @property
    def center(self) -> np.ndarray:
        return self.xyz.mean(axis=0)

    @property
    def color_rgb(self) -> np.ndarray:
        return self.rgb.mean(axis=0).astype(np.float32)

    @property
    def color_text(self) -> str:
        return color_name(self.color_rgb)

    def closest_point(self, p) -> np.ndarray:
        """The object's point with the smallest 3-D distance to ``p``."""
        d = np.linalg.norm(self.xyz - np.asarray(p)[None, :3], axis=1)
        return self.xyz[int(np.argmin(d))]

    @classmethod
    def padding(cls, rng: Optional[np.random.Generator] = None) -> "Object3d":
        """The padding object of the original loaders: 8 points near the origin, black, 'pad'."""
        rng = rng or np.random.default_rng()
        return cls(-1, -1, PAD_LABEL, rng.random((8, 3)) * 0.001, np.zeros((8, 3), np.float32))


@dataclass
class Cell:
    """A submap: a 30 m cube of the map and the objects that fall into it."""

    id: str  # f"{scene_short}_{idx:05d}"
    scene: str  # short scene name, e.g. "0003"
    bbox_w: np.ndarray  # float64 (6,): xmin, ymin, zmin, xmax, ymax, zmax (world, m)
    cell_size: float
    objects: List[Object3d] = field(default_factory=list)

    @property
    def center_w(self) -> np.ndarray:
        return (self.bbox_w[:3] + self.bbox_w[3:]) / 2.0

    def to_world(self, p_norm) -> np.ndarray:
        """Cell-normalised coordinates -> world metres (any trailing dimension 2 or 3)."""
        p = np.asarray(p_norm, dtype=np.float64)
        d = p.shape[-1]
        return self.bbox_w[:d] + p * self.cell_size

    def to_cell(self, p_world) -> np.ndarray:
        p = np.asarray(p_world, dtype=np.float64)
        d = p.shape[-1]
        return (p - self.bbox_w[:d]) / self.cell_size


@dataclass
class Hint:
    """One hint of a description, grounded in the pose's best cell."""

    object_instance_id: int
    object_label: str
    object_color_rgb: np.ndarray  # float32 (3,), mean rgb of the object in the pose cell
    object_color_text: str
    direction: str  # north / south / east / west / on-top
    offset_center: np.ndarray  # (2,) pose - object centre, pose-cell-normalised
    offset_closest: np.ndarray  # (2,) pose - object's closest point
    closest_point: np.ndarray  # (2,) best-cell-normalised if matched, else pose-cell
    is_matched: bool
    object_id: Optional[int] = None  # index into best_cell.objects when matched
    best_offset_center: Optional[np.ndarray] = None
    best_offset_closest: Optional[np.ndarray] = None

    @property
    def text(self) -> str:
        return f"The pose is {self.direction} of a {self.object_color_text} {self.object_label}."


@dataclass
class Pose:
    """A query: a position and the hints that describe it."""

    pose: np.ndarray  # float64 (3,), normalised in the best cell
    pose_w: np.ndarray  # float64 (3,), world metres
    cell_id: str  # the best (ground-truth) cell: nearest cell centre
    scene: str  # short scene name
    hints: List[Hint] = field(default_factory=list)
    described_by: str = "closest"  # closest / class / direction

    @property
    def text(self) -> str:
        return " ".join(h.text for h in self.hints)
