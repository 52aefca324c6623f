"""The folder ``spatialoc map build`` writes: ``map.json`` and ``cells.safetensors``.

``map.json`` says what the map was built from (source files and their
digests, label mapping, origin, frame, cell parameters, counts);
``cells.safetensors`` holds the cells as flat arrays (no pickles):

========================  ==============  ===========================================
``cell_bbox``             float64 [C, 6]  world cube of each cell (m, origin added)
``cell_number``           int64 [C]       the number in the cell's id, ``<name>_<number>``
``cell_objects``          int64 [C + 1]   offsets of each cell's objects
``object_class``          int16 [O]       index into the benchmark's class list
``object_instance``       int64 [O]       instance id in the source cloud
``object_points``         int64 [O + 1]   offsets of each object's points
``points``                float32 [P, 3]  cell-normalised, as in KITTI360Pose cells
``colors``                float32 [P, 3]  in [0, 1]
========================  ==============  ===========================================
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Sequence

import numpy as np

from ..errors import DataError
from . import constants as C
from .schema import Cell, Object3d

MAP_FILE = "map.json"
CELLS_FILE = "cells.safetensors"
FORMAT = "spatialoc-map"
VERSION = 1


def is_map_folder(path) -> bool:
    return (Path(path) / MAP_FILE).is_file()


def cells_to_arrays(cells: Sequence[Cell]) -> dict:
    cell_objects, object_points = [0], [0]
    classes, instances, points, colors = [], [], [], []
    for cell in cells:
        for obj in cell.objects:
            classes.append(C.CLASS_NAMES.index(obj.label))
            instances.append(obj.instance_id)
            points.append(np.asarray(obj.xyz, np.float32))
            colors.append(np.asarray(obj.rgb, np.float32))
            object_points.append(object_points[-1] + len(obj.xyz))
        cell_objects.append(cell_objects[-1] + len(cell.objects))
    return {
        "cell_bbox": np.stack([c.bbox_w for c in cells]).astype(np.float64),
        "cell_number": np.array([int(c.id.rsplit("_", 1)[1]) for c in cells], np.int64),
        "cell_objects": np.array(cell_objects, np.int64),
        "object_class": np.array(classes, np.int16),
        "object_instance": np.array(instances, np.int64),
        "object_points": np.array(object_points, np.int64),
        "points": np.concatenate(points).reshape(-1, 3),
        "colors": np.concatenate(colors).reshape(-1, 3),
    }


def write_map_folder(folder, cells: Sequence[Cell], meta: dict) -> None:
    """Write the map into ``folder`` (which the caller has made; it renames it into place)."""
    from safetensors.numpy import save_file

    from .. import atomic
    from ..digest import file_digest

    folder = Path(folder)
    save_file(cells_to_arrays(cells), str(folder / CELLS_FILE))
    meta = dict(meta, format=FORMAT, version=VERSION,
                cells_file={"name": CELLS_FILE, "sha256": file_digest(folder / CELLS_FILE, 64)})
    atomic.write_json(folder / MAP_FILE, meta)


def read_map_meta(folder) -> dict:
    path = Path(folder) / MAP_FILE
    try:
        meta = json.loads(path.read_text())
    except OSError as exc:
        raise DataError(f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        raise DataError(f"{path}: not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: not a spatialoc map (format is not {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise DataError(f"{path}: map version {meta.get('version')!r}; this spatialoc reads "
                        f"version {VERSION} (build the map again)")
    return meta


def read_map_cells(folder, name: str) -> List[Cell]:
    """The cells of a built map, ids ``<name>_<number>``, scene ``name``."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(folder) / CELLS_FILE
    try:
        a = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise DataError(f"{path}: unreadable ({' '.join(str(exc).split())})") from None
    try:
        return _cells(a, name)
    except (KeyError, IndexError, ValueError) as exc:
        raise DataError(f"{path}: inconsistent map arrays ({exc})") from None


def _cells(a: dict, name: str) -> List[Cell]:
    bbox, cell_objects, object_points = a["cell_bbox"], a["cell_objects"], a["object_points"]
    points = a["points"].astype(np.float64)
    colors = a["colors"]
    labels = [C.CLASS_NAMES[i] for i in a["object_class"].tolist()]
    instances = a["object_instance"].tolist()
    if (len(cell_objects) != len(bbox) + 1 or len(object_points) != len(labels) + 1
            or object_points[-1] != len(points) or cell_objects[-1] != len(labels)):
        raise ValueError("offsets do not match the array sizes")
    cells = []
    for c, number in enumerate(a["cell_number"].tolist()):
        objects = []
        for i, o in enumerate(range(cell_objects[c], cell_objects[c + 1])):
            lo, hi = object_points[o], object_points[o + 1]
            objects.append(Object3d(i, instances[o], labels[o], points[lo:hi], colors[lo:hi]))
        box = bbox[c].copy()
        cells.append(Cell(f"{name}_{number:05d}", name, box, float(np.max(box[3:] - box[:3])),
                          objects))
    return cells
