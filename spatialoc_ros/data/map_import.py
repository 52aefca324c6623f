"""``spatialoc map import``: one KITTI360Pose scene as a map folder.

A KITTI360Pose folder keeps a scene's cells in one pickle, which can only be
read whole: serving it means holding every cell's points in memory from the
start. A map folder (:mod:`.map_folder`) is read a cell at a time from a
memory-mapped file, and above 20,000 cells its encoded cells are served from a
memory-mapped store (:mod:`..core.map_store`). Importing writes the scene's
cells, unchanged, into a map folder: the same boxes, objects, points and
colours (as float32), each cell keeping the number of its KITTI360Pose id
(``<scene>_<number>`` becomes ``<name>_<number>``), in the scene's own frame.
The pickle is read once, here, through the restricted unpickler.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

from ..errors import DataError


def import_kitti_scene(root, scene: str, out, name: Optional[str] = None,
                       frame_id: str = "map", force: bool = False) -> dict:
    """Write ``scene`` of the KITTI360Pose folder ``root`` as the map folder ``out``; returns
    its ``map.json`` contents. ``name`` (default ``scene_<short name>``) names its cells and
    cache files."""
    from ..digest import file_digest
    from .kitti360pose import cells_path, read_cells, resolve_scene, scene_short_name
    from .map_build import check_map_out, publish_map

    t0 = time.perf_counter()
    root = Path(root)
    if not (root / "cells").is_dir():
        raise DataError(f"{root}: not a KITTI360Pose folder (no cells/)")
    available = sorted(p.stem for p in (root / "cells").glob("*.pkl"))
    scene = resolve_scene(scene, available)
    path = cells_path(root, scene)
    if not path.is_file():
        raise DataError(f"{path}: no such file (scenes here: "
                        f"{', '.join(scene_short_name(s) for s in available) or 'none'})")
    name = name or f"scene_{scene_short_name(scene)}"
    out = check_map_out(out, name, force)
    cells = read_cells(path)
    if not cells:
        raise DataError(f"{path}: no cells")
    numbers = [c.id.rsplit("_", 1)[-1] for c in cells]
    if not all(n.isdigit() for n in numbers) or len(set(numbers)) != len(numbers):
        # ids without a distinct trailing number: number the cells in their order
        numbers = [str(i) for i in range(len(cells))]
    cells = [replace(c, id=f"{name}_{int(n)}", scene=name) for c, n in zip(cells, numbers)]
    t1 = time.perf_counter()
    meta = {"name": name, "frame_id": frame_id, "origin": [0.0, 0.0, 0.0],
            "sources": [{"path": str(path), "sha256": file_digest(path, 64),
                         "kitti360pose_scene": scene}],
            # cut by whoever made the KITTI360Pose folder; the sizes are the cells' own
            "cell_parameters": {"size_m": sorted({float(c.cell_size) for c in cells}),
                                "cut_by": "the KITTI360Pose folder"},
            "counts": {"cells": len(cells), "objects": sum(len(c.objects) for c in cells),
                       "points": int(sum(len(o.xyz) for c in cells for o in c.objects))},
            "seconds": {"read": t1 - t0}}
    publish_map(out, cells, meta)
    meta["seconds"]["total"] = time.perf_counter() - t0
    return meta
