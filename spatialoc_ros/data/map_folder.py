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

A map is served without reading its points: :class:`MapCells` keeps the small
per-cell and per-object arrays in memory and reads a cell's points from the
memory-mapped file when that cell is asked for (a query's top cells, the bank
when it is first built), so a city-sized map starts in seconds and its points
stay on disk.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

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
    """The cells of a built map, ids ``<name>_<number>``, scene ``name``, all in memory."""
    return list(MapCells(folder, name))


_INDEX = ("cell_bbox", "cell_number", "cell_objects", "object_class", "object_instance",
          "object_points")
CELLS_KEPT = 256  # cells read lately, kept built (a query's top cells, their markers, ground)


class MapCells(Sequence[Cell]):
    """The cells of a built map as a sequence, each read from the memory-mapped cells file when
    asked for.

    In memory: the per-cell and per-object arrays (about 70 bytes a cell and 26 an object) and
    the columns serving needs of every cell (:attr:`ids`, :attr:`scenes`, :attr:`sizes`,
    :attr:`origins`, :attr:`boxes`); the points and colours stay in the file (safetensors,
    memory-mapped).
    ``content_digest`` stands for everything in the file: the SHA-256 of its bytes that
    ``spatialoc map build`` recorded in ``map.json`` (with the file's size and the map's
    name), so a start never reads the points to key its caches.
    """

    def __init__(self, folder, name: str, recorded_sha256: str = ""):
        from safetensors import SafetensorError, safe_open

        self.path = Path(folder) / CELLS_FILE
        self.name = name
        try:
            self._file = safe_open(str(self.path), framework="numpy")
            a = {k: self._file.get_tensor(k) for k in _INDEX}
            self._rows = int(self._file.get_slice("points").get_shape()[0])
            colours = int(self._file.get_slice("colors").get_shape()[0])
        except (OSError, SafetensorError) as exc:
            raise DataError(f"{self.path}: unreadable ({' '.join(str(exc).split())})") from None
        except KeyError as exc:
            raise DataError(f"{self.path}: inconsistent map arrays (no {exc})") from None
        bbox, cell_objects, object_points = a["cell_bbox"], a["cell_objects"], a["object_points"]
        labels = a["object_class"]
        if (len(cell_objects) != len(bbox) + 1 or len(object_points) != len(labels) + 1
                or object_points[-1] != self._rows or colours != self._rows
                or cell_objects[-1] != len(labels) or len(a["cell_number"]) != len(bbox)
                or (np.diff(cell_objects) < 0).any() or (np.diff(object_points) < 0).any()
                or (labels.size and (labels.min() < 0 or labels.max() >= len(C.CLASS_NAMES)))):
            raise DataError(f"{self.path}: inconsistent map arrays (offsets do not match the "
                            "array sizes)")
        self._bbox = self.boxes = bbox.astype(np.float64)
        self._cell_objects, self._object_points = cell_objects, object_points
        self._labels = labels
        self._instances = a["object_instance"]
        self.ids = [f"{name}_{n:05d}" for n in a["cell_number"].tolist()]
        self.sizes = np.max(self._bbox[:, 3:] - self._bbox[:, :3], axis=1)
        self.origins = self._bbox[:, :2].copy()
        self.scenes = [name] * len(self.ids)
        size = self.path.stat().st_size
        self.content_digest = hashlib.blake2b(
            f"built-map|{name}|{recorded_sha256}|{size}".encode(), digest_size=8).hexdigest()
        self._kept: "OrderedDict[int, Cell]" = OrderedDict()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"cell {i} of a map of {len(self)}")
        i %= len(self)
        cell = self._kept.get(i)
        if cell is None:
            cell = self._read(i)
            self._kept[i] = cell
            if len(self._kept) > CELLS_KEPT:
                self._kept.popitem(last=False)
        else:
            self._kept.move_to_end(i)
        return cell

    def __iter__(self) -> Iterator[Cell]:
        """Every cell in order, read one by one (nothing kept: a pass over a city's cells)."""
        return (self._read(i) for i in range(len(self)))

    def _read(self, i: int) -> Cell:
        first, last = self._cell_objects[i], self._cell_objects[i + 1]
        lo, hi = int(self._object_points[first]), int(self._object_points[last])
        points = self._file.get_slice("points")[lo:hi].astype(np.float64)
        colors = self._file.get_slice("colors")[lo:hi]
        objects = []
        for j, o in enumerate(range(first, last)):
            a, b = self._object_points[o] - lo, self._object_points[o + 1] - lo
            objects.append(Object3d(j, int(self._instances[o]),
                                    C.CLASS_NAMES[int(self._labels[o])], points[a:b],
                                    colors[a:b]))
        box = self._bbox[i].copy()
        return Cell(self.ids[i], self.name, box, float(self.sizes[i]), objects)

    def sample_points(self, count: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
        """(xyz float64 [n, 3] in world metres, class names str [n]) of ``count`` points drawn
        evenly from every cell's objects (n = min(count, all)), read from the file in order."""
        total = self._rows
        rng = np.random.default_rng(seed)
        rows = (np.arange(total) if count >= total
                else np.sort(rng.choice(total, size=count, replace=False)))
        obj = np.searchsorted(self._object_points, rows, side="right") - 1
        cell = np.searchsorted(self._cell_objects, obj, side="right") - 1
        points = self._file.get_slice("points")
        xyz = np.concatenate([points[a:b] for a, b in _runs(rows)]) if len(rows) else \
            np.zeros((0, 3), np.float32)
        world = self._bbox[cell, :3] + xyz.astype(np.float64) * self.sizes[cell, None]
        return world, np.asarray(C.CLASS_NAMES)[self._labels[obj].astype(np.int64)]


def _runs(rows: np.ndarray, gap: int = 1):
    """[a, b) spans covering sorted ``rows`` exactly: consecutive rows read as one slice."""
    breaks = np.flatnonzero(np.diff(rows) > gap) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(rows)]])
    for s, e in zip(starts, stops):
        a, b = int(rows[s]), int(rows[e - 1]) + 1
        yield a, b
