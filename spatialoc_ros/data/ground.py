"""Ground height of a map near a point: the z of a position found from text alone.

Text fixes x and y only. The height published with a position is taken from
the cell's ground objects (road, sidewalk, parking, terrain) within a few metres
of the point (their median height), else from any object points there (a low
percentile), else from the cell's ground objects anywhere, else the cell's
lowest point. Points of each cell are gathered once and kept.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from .schema import Cell

GROUND_CLASSES = frozenset({"road", "sidewalk", "parking", "terrain"})


class GroundHeights:
    """Ground heights near points of a map's cells, with each cell's points gathered once."""

    def __init__(self, radius_m: float = 3.0, max_cells: int = 4096):
        self.radius_m = radius_m
        self.max_cells = max_cells
        self._points: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}

    def _cell_points(self, cell: Cell) -> Tuple[np.ndarray, np.ndarray]:
        """(xyz [P, 3] in world metres, is_ground [P]) of the cell's objects."""
        got = self._points.get(cell.id)
        if got is None:
            objs = [o for o in cell.objects if len(o.xyz)]
            if objs:
                xyz = cell.to_world(np.concatenate([o.xyz for o in objs]))
                ground = np.concatenate([np.full(len(o.xyz), o.label in GROUND_CLASSES)
                                         for o in objs])
            else:
                xyz, ground = np.zeros((0, 3)), np.zeros(0, bool)
            if len(self._points) >= self.max_cells:
                self._points.clear()
            got = self._points[cell.id] = (xyz, ground)
        return got

    def __call__(self, cell: Cell, xy_world) -> float:
        """The ground z (world metres) near ``xy_world`` in ``cell``; the cell's floor if it has
        no points."""
        xyz, ground = self._cell_points(cell)
        if len(xyz) == 0:
            return float(cell.bbox_w[2])
        xy = np.asarray(xy_world, dtype=np.float64)[None, :2]
        near = np.linalg.norm(xyz[:, :2] - xy, axis=1) <= self.radius_m
        if (near & ground).any():
            return float(np.median(xyz[near & ground, 2]))
        if near.any():
            return float(np.percentile(xyz[near, 2], 5))
        if ground.any():
            return float(np.median(xyz[ground, 2]))
        return float(xyz[:, 2].min())
