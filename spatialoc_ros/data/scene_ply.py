"""A synthetic scene written as KITTI-360's accumulated semantic PLY files.

``spatialoc data synth --ply DIR`` writes, per scene, ``DIR/<scene>/static/<first>_<last>.ply``
windows along the drive (as KITTI-360 names its windows by the first and last frame), each
with the fields of KITTI-360's files: ``float x y z; uchar red green blue; int semantic;
int instance; uchar visible; float confidence``. ``semantic`` is the KITTI-360 label id of the
object's class and ``instance`` the scene's own object id (unique per object, stuff included).
Each object goes whole into the window the generator's scene order gives it
(:func:`.city.drive_windows`), so reading the windows in order meets the objects in the
benchmark's own order; the windows' extents overlap where objects reach across.
``DIR/<scene>/poses.txt`` holds the drive in the layout of KITTI-360's ``poses.txt`` (for
``map build --trajectory``) and ``DIR/<scene>/queries.jsonl`` the scene's descriptions
(``text``, ``scene``, ``pose_w``) for ``spatialoc eval --map``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from . import constants as C
from .cells import SceneObject
from .city import drive_windows, window_samples

COPY_NOISE_M = 0.02
PLY_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                      ("blue", "u1"), ("semantic", "<i4"), ("instance", "<i4"),
                      ("visible", "u1"), ("confidence", "<f4")])


def scene_points(objects: Sequence[SceneObject]) -> np.ndarray:
    """All points of a scene as PLY records."""
    rows = np.zeros(sum(len(o.xyz) for o in objects), dtype=PLY_DTYPE)
    at = 0
    for o in objects:
        n = len(o.xyz)
        part = rows[at:at + n]
        for i, axis in enumerate("xyz"):
            part[axis] = o.xyz[:, i]
        rgb = np.clip(np.rint(o.rgb * 255.0), 0, 255).astype(np.uint8)
        part["red"], part["green"], part["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
        part["semantic"] = C.CLASSES[o.label][0]
        part["instance"] = o.instance_id
        part["visible"] = 1
        part["confidence"] = 1.0
        at += n
    return rows


def write_scene_ply(folder, scene: str, objects: Sequence[SceneObject], trajectory: np.ndarray,
                    poses: Sequence = (), binary: bool = True, copies: int = 1) -> Path:
    """Write one scene's windows (and its queries) under ``folder/scene``; returns that
    folder. ``copies`` > 1 writes every point that many times with 2 cm of noise, as a denser
    scanner would see the scene (for measuring builds of large clouds)."""
    import plyfile

    from ..atomic import atomic_write, write_text

    root = Path(folder) / scene
    (root / "static").mkdir(parents=True, exist_ok=True)
    windows = np.array(drive_windows(objects, trajectory))
    for w in np.unique(windows):
        rows = scene_points([o for o, ow in zip(objects, windows) if ow == w])
        if copies > 1:
            rng = np.random.default_rng(int(w))
            rows = np.repeat(rows, copies)
            for axis in "xyz":
                rows[axis] += rng.normal(0.0, COPY_NOISE_M, len(rows)).astype(np.float32)
        first, last = window_samples(trajectory, int(w))
        element = plyfile.PlyElement.describe(rows, "vertex")
        path = root / "static" / f"{first:010d}_{last:010d}.ply"
        atomic_write(path, lambda tmp, e=element: plyfile.PlyData([e], text=not binary).write(tmp))
    # the drive as KITTI-360's poses.txt: frame number, then a 3x4 pose (here no rotation)
    frames = np.arange(len(trajectory))
    pose = np.zeros((len(trajectory), 12))
    pose[:, [0, 5, 10]] = 1.0
    pose[:, [3, 7, 11]] = trajectory
    write_text(root / "poses.txt", "".join(f"{f} " + " ".join(f"{v:.6f}" for v in row) + "\n"
                                           for f, row in zip(frames, pose)))
    lines = [json.dumps({"text": p.text, "scene": scene, "pose_w": np.round(p.pose_w, 4).tolist()})
             for p in poses]
    write_text(root / "queries.jsonl", "".join(line + "\n" for line in lines))
    return root
