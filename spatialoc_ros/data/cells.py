"""Cutting a scene into cells, as the KITTI360Pose generator does.

A scene is a list of world-coordinate objects in *scene order* (the order in
which the original generator meets them while reading the map). A cell is a
30 m cube: stuff objects (road, vegetation, ...) are cropped to the cube and
split into connected pieces with DBSCAN; instance objects (buildings, poles,
...) are kept whole when at least a third of their points lie inside.
The procedure and its constants are summarised in README.md, "The synthetic city".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
from scipy.spatial import cKDTree

from . import constants as C
from .schema import Cell, Object3d

_TILE = 15.0  # m; stuff objects are indexed in tiles so that cropping touches few points


@dataclass
class SceneObject:
    """One object of the whole scene, in world coordinates (metres)."""

    instance_id: int
    label: str
    xyz: np.ndarray  # float64 [N, 3]
    rgb: np.ndarray  # float32 [N, 3]
    stuff: Optional[bool] = None  # cropped and clustered per cell; None: by its class

    @property
    def is_stuff(self) -> bool:
        return self.label in C.STUFF_CLASSES if self.stuff is None else self.stuff


class SceneIndex:
    """Scene objects with a tile index for fast cube queries."""

    def __init__(self, objects: Sequence[SceneObject]):
        self.objects = list(objects)
        owners, lo, hi, pts, cols = [], [], [], [], []
        for i, obj in enumerate(self.objects):
            if obj.is_stuff:
                keys = np.floor(obj.xyz[:, :2] / _TILE).astype(np.int64)
                _, inverse = np.unique(keys, axis=0, return_inverse=True)
                groups = [np.flatnonzero(inverse.ravel() == k) for k in range(inverse.max() + 1)]
            else:
                groups = [np.arange(len(obj.xyz))]
            for g in groups:
                p = obj.xyz[g]
                owners.append(i)
                lo.append(p.min(axis=0))
                hi.append(p.max(axis=0))
                pts.append(p)
                cols.append(obj.rgb[g])
        self.tile_owner = np.asarray(owners, dtype=np.int64)
        self.tile_lo = np.asarray(lo).reshape(-1, 3)
        self.tile_hi = np.asarray(hi).reshape(-1, 3)
        self.tile_xyz = pts
        self.tile_rgb = cols
        inst = [o.xyz for o in self.objects if not o.is_stuff]
        self._instance_tree = cKDTree(np.concatenate(inst)) if inst else None

    def tiles_in(self, bbox: np.ndarray) -> np.ndarray:
        """Indices of tiles whose bounding box meets the closed cube ``bbox``."""
        ok = (np.all(self.tile_hi >= bbox[None, :3], axis=1)
              & np.all(self.tile_lo <= bbox[None, 3:], axis=1))
        return np.flatnonzero(ok)

    def near_instance(self, points: np.ndarray, radius: float) -> np.ndarray:
        """For each point: is some instance object's point within ``radius`` (3-D)?"""
        if self._instance_tree is None:
            return np.zeros(len(points), dtype=bool)
        d, _ = self._instance_tree.query(points, k=1, distance_upper_bound=radius)
        return np.isfinite(d) & (d <= radius)


def _inside(xyz: np.ndarray, bbox: np.ndarray) -> np.ndarray:
    return np.all(xyz >= bbox[None, :3], axis=1) & np.all(xyz <= bbox[None, 3:], axis=1)


def dbscan_labels(xyz: np.ndarray, eps: float = C.DBSCAN_EPS,
                  min_samples: int = C.DBSCAN_MIN_SAMPLES) -> np.ndarray:
    """Cluster labels (-1 = noise) of open3d's DBSCAN on world coordinates."""
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    return np.asarray(pcd.cluster_dbscan(eps=eps, min_points=min_samples, print_progress=False))


def build_cell(
    index: SceneIndex,
    bbox: np.ndarray,
    cell_id: str,
    scene: str,
    min_objects: int = C.NUM_MENTIONED,
) -> Optional[Cell]:
    """The cell of ``bbox`` (world cube), or None if it holds fewer than ``min_objects``
    objects."""
    bbox = np.asarray(bbox, dtype=np.float64)
    cell_size = float(np.max(bbox[3:] - bbox[:3]))
    hits = index.tiles_in(bbox)
    kept: List[Object3d] = []
    for owner in np.unique(index.tile_owner[hits]):  # ascending = scene order
        obj = index.objects[owner]
        if not obj.is_stuff:
            inside = _inside(obj.xyz, bbox)
            if inside.sum() >= C.INSIDE_FRACTION * len(obj.xyz):
                kept.append(Object3d(0, obj.instance_id, obj.label, obj.xyz.copy(),
                                     obj.rgb.copy()))
            continue
        tiles = hits[index.tile_owner[hits] == owner]
        xyz = np.concatenate([index.tile_xyz[t] for t in tiles])
        rgb = np.concatenate([index.tile_rgb[t] for t in tiles])
        inside = _inside(xyz, bbox)
        if inside.sum() < C.STUFF_MIN_POINTS:
            continue
        xyz, rgb = xyz[inside], rgb[inside]
        labels = dbscan_labels(xyz)
        for k in range(labels.max() + 1):
            member = labels == k
            if member.sum() >= C.STUFF_MIN_POINTS:
                kept.append(Object3d(0, obj.instance_id, obj.label, xyz[member], rgb[member]))
    if len(kept) < min_objects:
        return None
    for i, o in enumerate(kept):
        o.id = i
        o.xyz = (o.xyz - bbox[None, :3]) / cell_size
    return Cell(cell_id, scene, bbox, cell_size, kept)


def subsample_locations(trajectory: np.ndarray, min_dist: float) -> np.ndarray:
    """Greedy subsampling: keep a position if it is >= ``min_dist`` (3-D) from every kept one."""
    kept: List[np.ndarray] = []
    grid: dict = {}
    for p in trajectory:
        key = tuple(np.floor(p / min_dist).astype(int))
        near = [
            q
            for dx in (-1, 0, 1)
            for dy in (-1, 0, 1)
            for dz in (-1, 0, 1)
            for q in grid.get((key[0] + dx, key[1] + dy, key[2] + dz), ())
        ]
        if all(np.linalg.norm(p - q) >= min_dist for q in near):
            kept.append(p)
            grid.setdefault(key, []).append(p)
    return np.asarray(kept).reshape(-1, 3)


def close_locations(index: SceneIndex, locations: np.ndarray,
                    radius: float = C.CELL_SIZE / 2) -> np.ndarray:
    """Locations with some instance object point within ``radius`` (3-D)."""
    return locations[index.near_instance(locations, radius)]


def grid_cell_centers(locations: np.ndarray) -> np.ndarray:
    """Cell centres on a 10 m grid within 30 m (2-D) of a location; z from that location."""
    x0, y0 = int(locations[:, 0].min()), int(locations[:, 1].min())
    x1, y1 = int(locations[:, 0].max()), int(locations[:, 1].max())
    xs, ys = np.meshgrid(np.arange(x0, x1, C.CELL_DIST), np.arange(y0, y1, C.CELL_DIST),
                         indexing="ij")
    centers = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    if len(centers) == 0:
        return np.zeros((0, 3))
    d, nearest = cKDTree(locations[:, :2]).query(centers, k=1)
    keep = d <= C.CELL_SIZE
    return np.concatenate([centers[keep], locations[nearest[keep], 2:3]], axis=1)


def ground_cell_centers(standing: np.ndarray, reach: float = 0.0) -> np.ndarray:
    """Cell centres of a map without a drive: the centres of the 10 m grid squares holding
    ground a person can stand on, and of the squares up to ``reach`` metres (centre to centre)
    around them, each at the median height of the nearest such ground plus the height of a
    drive's poses above it (:data:`constants.POSE_HEIGHT`), where the benchmark's centres are.

    Every point of that ground is within 7.1 m (half the square's diagonal) of a centre, as a
    drive's poses are of the benchmark's grid; ``reach`` extends the cells to places beside it,
    as the benchmark's centres reach 30 m from the drive.
    """
    if len(standing) == 0:
        return np.zeros((0, 3))
    keys = np.floor(standing[:, :2] / C.CELL_DIST).astype(np.int64)
    squares, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(squares) + 1))
    z = np.array([np.median(standing[order[a:b], 2]) for a, b in zip(bounds[:-1], bounds[1:])])
    rings = int(reach // C.CELL_DIST)
    if rings > 0:
        steps = np.arange(-rings, rings + 1)
        offsets = np.stack(np.meshgrid(steps, steps, indexing="ij"), -1).reshape(-1, 2)
        offsets = offsets[np.linalg.norm(offsets, axis=1) * C.CELL_DIST <= reach + 1e-9]
        around = np.unique((squares[:, None, :] + offsets[None]).reshape(-1, 2), axis=0)
        _, nearest = cKDTree(squares).query(around)
        squares, z = around, z[nearest]
    return np.concatenate([(squares + 0.5) * C.CELL_DIST, z[:, None] + C.POSE_HEIGHT], axis=1)


def make_cells(index: SceneIndex, centers: np.ndarray, scene_short: str,
               progress=None) -> List[Cell]:
    """Build the grid cells; rejected centres leave a gap in the id sequence."""
    cells = []
    half = C.CELL_SIZE / 2
    for idx, c in enumerate(centers):
        bbox = np.concatenate([c - half, c + half])
        cell = build_cell(index, bbox, f"{scene_short}_{idx:05d}", scene_short)
        if cell is not None:
            cells.append(cell)
        if progress is not None:
            progress(1)
    return cells
