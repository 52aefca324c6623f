"""The loaded map as one coloured point cloud (``sensor_msgs/PointCloud2``).

Cells overlap (30 m cubes on a 10 m grid), so an object's points appear in up
to nine cells; the cloud keeps each point once (2 cm grid), colours it by its
class (the palette of ``spatialoc data show``) and subsamples evenly to a
maximum count. The layout is that of ``sensor_msgs_py.point_cloud2.create_cloud``
with fields x, y, z (float32) and rgb (float32 holding packed 0x00RRGGBB), which
RViz colours by; ``sensor_msgs_py`` is used when installed (a ROS 2 install),
an equivalent local builder otherwise (the pip wheels do not ship it).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField

from ..data.constants import PAD_LABEL
from ..data.show import CLASS_COLORS, UNKNOWN_CLASS_COLOR

POINT_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4")])
FIELDS = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
          for i, n in enumerate(("x", "y", "z", "rgb"))]
DEDUP_GRID_M = 0.02
OVERSAMPLE = 4  # points drawn per point kept from a file-backed map (cells overlap)
_KEY_BITS = 21  # per axis: three axes pack into one int64


def _hex_rgb(color: str) -> Tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _unique_rows(xyz: np.ndarray, grid: float) -> np.ndarray:
    """Indices of the first point in each ``grid``-sized voxel (points closer than a voxel
    collapse)."""
    if len(xyz) == 0:
        return np.zeros(0, dtype=np.int64)
    q = np.floor((xyz - xyz.min(axis=0)) / grid).astype(np.int64)
    span = int(q.max()) + 1
    if span >= 1 << _KEY_BITS:  # a map wider than 2^21 voxels: a coarser grid keeps the key exact
        q = q // ((span >> _KEY_BITS) + 1)
    keys = (q[:, 0] << (2 * _KEY_BITS)) | (q[:, 1] << _KEY_BITS) | q[:, 2]
    return np.sort(np.unique(keys, return_index=True)[1])


def map_points(cells: Sequence, max_points: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(xyz float32 [N, 3] world metres, rgb uint8 [N, 3]) of the cells' objects,
    N <= max_points.

    A map whose cells are read from a file when asked for (a built map) draws its points from
    the file instead (:meth:`~..data.map_folder.MapCells.sample_points`): a few times
    ``max_points`` of them evenly, so that the copies overlapping cells hold still leave about
    ``max_points`` distinct ones.
    """
    sample = getattr(cells, "sample_points", None)
    if sample is not None:
        xyz, labels = sample(OVERSAMPLE * max_points, seed)
        names, which = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
        palette = np.array([_hex_rgb(CLASS_COLORS.get(n, UNKNOWN_CLASS_COLOR)) for n in names],
                           np.uint8).reshape(-1, 3)
        return _thin(xyz, palette[which.reshape(-1)], max_points, seed)
    xyz, rgb = [], []
    for cell in cells:
        for obj in cell.objects:
            if obj.label == PAD_LABEL or len(obj.xyz) == 0:
                continue
            xyz.append(cell.to_world(obj.xyz))
            color = _hex_rgb(CLASS_COLORS.get(obj.label, UNKNOWN_CLASS_COLOR))
            rgb.append(np.broadcast_to(np.array(color, np.uint8), (len(obj.xyz), 3)))
    if not xyz:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    return _thin(np.concatenate(xyz), np.concatenate(rgb), max_points, seed)


def _thin(xyz: np.ndarray, rgb: np.ndarray, max_points: int, seed: int):
    """Each point once (on the dedup grid), then at most ``max_points`` of them, evenly."""
    if len(xyz) == 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    keep = _unique_rows(xyz, DEDUP_GRID_M)
    if len(keep) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(keep, size=max_points, replace=False))
    return xyz[keep].astype(np.float32), rgb[keep]


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint8 [N, 3] -> float32 [N] whose bits are 0x00RRGGBB (the PCL/RViz convention)."""
    rgb = np.asarray(rgb, dtype=np.uint32)
    packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    return packed.astype("<u4").view("<f4")


def xyzrgb_cloud(header, xyz: np.ndarray, rgb: np.ndarray) -> PointCloud2:
    """An unordered PointCloud2 (height 1) with fields x, y, z, rgb; 16 bytes per point."""
    points = np.zeros(len(xyz), dtype=POINT_DTYPE)
    if len(xyz):
        points["x"], points["y"], points["z"] = (np.asarray(xyz, np.float32)[:, i]
                                                 for i in range(3))
        points["rgb"] = pack_rgb(rgb)
    try:
        from sensor_msgs_py import point_cloud2
    except ImportError:
        return PointCloud2(header=header, height=1, width=len(points), fields=FIELDS,
                           is_bigendian=False, point_step=POINT_DTYPE.itemsize,
                           row_step=POINT_DTYPE.itemsize * len(points), data=points.tobytes(),
                           is_dense=False)
    return point_cloud2.create_cloud(header, FIELDS, points)
