"""Read and write a KITTI360Pose dataset folder (the format README.md's "Data" section describes).

Layout::

    <root>/cells/<scene>.pkl        list of Cell       (pickled original classes)
    <root>/poses/<scene>.pkl        list of Pose
    <root>/direction/<scene>.json   optional neighbour map of the cells

``<scene>`` is the full KITTI-360 drive name. Pickles are loaded only through
:mod:`.legacy`'s restricted unpickler and converted to the dataclasses of
:mod:`.schema`; anything malformed is reported as a one-line
:class:`~spatialoc_ros.errors.DataError` naming the file. Files written here
load unchanged in the original Text2Pos / Text2Loc loaders.
"""
from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from ..atomic import write_bytes
from ..errors import DataError
from . import legacy
from .constants import ALL_SCENES, MIN_CELLS_PER_SPLIT, SPLITS, scene_short_name
from .schema import Cell, Hint, Object3d, Pose

# Neighbour keys of direction/<scene>.json by the offset (dx, dy) of the bbox
# minimum corners in metres; +x is east, +y north.
NEIGHBOUR_STEP = 10.0
NEIGHBOUR_OFFSETS = {
    "east": (1, 0),
    "west": (-1, 0),
    "north": (0, 1),
    "south": (0, -1),
    "northeast": (1, 1),
    "northwest": (-1, 1),
    "southeast": (1, -1),
    "southwest": (-1, -1),
}

DirectionMap = Dict[str, Dict[str, Optional[str]]]


@dataclass
class SceneData:
    """One scene of the dataset: its cells, its poses and (optionally) its neighbour map."""

    scene: str  # full drive name, e.g. "2013_05_28_drive_0003_sync"
    cells: List[Cell]
    poses: List[Pose]
    directions: Optional[DirectionMap] = None


@dataclass
class SplitData:
    """Several scenes pooled: the cell database and the queries of one split."""

    name: str
    scenes: List[str]
    cells: List[Cell]
    poses: List[Pose]
    cells_by_id: Dict[str, Cell] = field(default_factory=dict)
    directions: Optional[DirectionMap] = None  # merged map; None unless every scene has one


# --- paths ---------------------------------------------------------------------------------


def cells_path(root, scene: str) -> Path:
    return Path(root) / "cells" / f"{scene}.pkl"


def poses_path(root, scene: str) -> Path:
    return Path(root) / "poses" / f"{scene}.pkl"


def directions_path(root, scene: str) -> Path:
    return Path(root) / "direction" / f"{scene}.json"


def _check_scene_name(scene: str) -> None:
    """Scene names become file names: refuse anything that could leave the folder."""
    if (not isinstance(scene, str) or not scene or "/" in scene or "\\" in scene
            or scene.startswith(".")):
        raise DataError(f"invalid scene name {scene!r}")


def _check_root(root) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    return root


# --- legacy objects -> dataclasses -------------------------------------------------------


class _Invalid(Exception):
    """A malformed record; the caller adds the file and record to the message."""


def _attr(obj, name):
    try:
        return obj.__dict__[name]
    except KeyError:
        raise _Invalid(f"missing attribute {name!r}") from None


def _str(obj, name) -> str:
    value = _attr(obj, name)
    if not isinstance(value, str):
        raise _Invalid(f"{name} must be a str, got {type(value).__name__}")
    return value


def _int(obj, name) -> int:
    value = _attr(obj, name)
    if isinstance(value, np.ndarray) and value.shape == ():  # 0-d array from an odd writer
        value = value[()]
    if not isinstance(value, numbers.Integral):
        raise _Invalid(f"{name} must be an integer, got {type(value).__name__}")
    return int(value)


def _bool(obj, name) -> bool:
    value = _attr(obj, name)
    if not isinstance(value, (bool, np.bool_)):
        raise _Invalid(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _array(obj, name, shape, dtype) -> np.ndarray:
    """A finite real array of ``shape`` (``None`` = any length), converted to ``dtype``."""
    value = _attr(obj, name)
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        raise _Invalid(f"{name} must be a numeric array, got {type(value).__name__}")
    if value.ndim != len(shape) or any(s is not None and s != n
                                       for s, n in zip(shape, value.shape)):
        want = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
        raise _Invalid(f"{name} must have shape {want}, got {list(value.shape)}")
    if not np.isfinite(value).all():
        raise _Invalid(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(value, dtype=dtype)


def _convert_each(items: list, convert, what: str) -> list:
    """Convert every element; a failure names the element as ``<what> <index>``."""
    out = []
    for i, item in enumerate(items):
        try:
            out.append(convert(item))
        except _Invalid as exc:
            raise _Invalid(f"{what} {i}: {exc}") from None
    return out


def _object_from_legacy(obj) -> Object3d:
    if not isinstance(obj, legacy.Object3d):
        raise _Invalid(f"expected Object3d, got {type(obj).__name__}")
    xyz = _array(obj, "xyz", (None, 3), np.float64)
    rgb = _array(obj, "rgb", (None, 3), np.float32)
    if len(xyz) == 0 or len(rgb) != len(xyz):
        raise _Invalid(f"needs >= 1 point and as many colours as points, got {len(xyz)} xyz / "
                       f"{len(rgb)} rgb")
    return Object3d(
        id=_int(obj, "id"), instance_id=_int(obj, "instance_id"), label=_str(obj, "label"),
        xyz=xyz, rgb=rgb
    )


def _cell_from_legacy(cell) -> Cell:
    if not isinstance(cell, legacy.Cell):
        raise _Invalid(f"expected Cell, got {type(cell).__name__}")
    cell_id = _str(cell, "id")
    objects = _attr(cell, "objects")
    if not isinstance(objects, list):
        raise _Invalid(f"cell {cell_id!r}: objects must be a list, got {type(objects).__name__}")
    if not objects:
        raise _Invalid(f"cell {cell_id!r} has no objects")
    cell_size = _attr(cell, "cell_size")
    if not isinstance(cell_size, numbers.Real) or not np.isfinite(cell_size) or cell_size <= 0:
        raise _Invalid(f"cell {cell_id!r}: cell_size must be a positive number, got {cell_size!r}")
    try:
        converted = _convert_each(objects, _object_from_legacy, "object")
    except _Invalid as exc:
        raise _Invalid(f"cell {cell_id!r}, {exc}") from None
    try:
        bbox_w = _array(cell, "bbox_w", (6,), np.float64)
        scene = _str(cell, "scene_name")
    except _Invalid as exc:
        raise _Invalid(f"cell {cell_id!r}: {exc}") from None
    return Cell(id=cell_id, scene=scene, bbox_w=bbox_w, cell_size=float(cell_size),
                objects=converted)


def _hint_from_legacy(d) -> Hint:
    if not isinstance(d, legacy.DescriptionBestCell):
        raise _Invalid(f"expected DescriptionBestCell, got {type(d).__name__}")
    matched = _bool(d, "is_matched")
    return Hint(
        object_instance_id=_int(d, "object_instance_id"),
        object_label=_str(d, "object_label"),
        object_color_rgb=_array(d, "object_color_rgb", (3,), np.float32),
        object_color_text=_str(d, "object_color_text"),
        direction=_str(d, "direction"),
        offset_center=_array(d, "offset_center", (2,), np.float64),
        offset_closest=_array(d, "offset_closest", (2,), np.float64),
        closest_point=_array(d, "closest_point", (2,), np.float64),
        is_matched=matched,
        # The best-cell attributes exist only on matched hints.
        object_id=_int(d, "object_id") if matched else None,
        best_offset_center=(_array(d, "best_offset_center", (2,), np.float64) if matched
                            else None),
        best_offset_closest=(_array(d, "best_offset_closest", (2,), np.float64) if matched
                             else None),
    )


def _pose_from_legacy(pose) -> Pose:
    if not isinstance(pose, legacy.Pose):
        raise _Invalid(f"expected Pose, got {type(pose).__name__}")
    descriptions = _attr(pose, "descriptions")
    if not isinstance(descriptions, list):
        raise _Invalid(f"descriptions must be a list, got {type(descriptions).__name__}")
    hints = _convert_each(descriptions, _hint_from_legacy, "description")
    return Pose(
        pose=_array(pose, "pose", (3,), np.float64),
        pose_w=_array(pose, "pose_w", (3,), np.float64),
        cell_id=_str(pose, "cell_id"),
        scene=_str(pose, "scene_name"),
        hints=hints,
        described_by=_str(pose, "described_by"),
    )


def _read_records(path, convert, what: str) -> list:
    """Load a pickled list and convert every element, naming the file and index on failure."""
    data = legacy.load_legacy(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of {what}, got {type(data).__name__}")
    try:
        return _convert_each(data, convert, what)
    except _Invalid as exc:
        raise DataError(f"{path}: {exc}") from None


def read_cells(path) -> List[Cell]:
    """Read ``cells/<scene>.pkl``; every cell must have at least one object."""
    return _read_records(path, _cell_from_legacy, "Cell")


def read_poses(path) -> List[Pose]:
    """Read ``poses/<scene>.pkl``."""
    return _read_records(path, _pose_from_legacy, "Pose")


def read_directions(path) -> DirectionMap:
    """Read ``direction/<scene>.json``: ``{cell_id: {direction word: cell_id or null}}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not valid JSON: {legacy.one_line(exc)}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object of cell ids, got {type(data).__name__}")
    for cell_id, neighbours in data.items():
        if not isinstance(neighbours, dict):
            raise DataError(f"{path}: entry {cell_id!r} must be an object of directions")
        for key, value in neighbours.items():
            if key not in NEIGHBOUR_OFFSETS or not (value is None or isinstance(value, str)):
                raise DataError(f"{path}: entry {cell_id!r}: bad neighbour {key!r}: {value!r}")
    return data


# --- folders and splits --------------------------------------------------------------------


def available_scenes(root) -> List[str]:
    """Scenes of ``root`` that have both a cells and a poses file, sorted."""
    root = _check_root(root)
    cells_dir = root / "cells"
    if not cells_dir.is_dir():
        return []
    scenes = [p.stem for p in cells_dir.glob("*.pkl") if p.is_file()]
    return sorted(s for s in scenes if poses_path(root, s).is_file())


def resolve_scene(scene: str, available: Sequence[str] = ()) -> str:
    """A full drive name from a full or 4-digit short name; DataError if none fits."""
    known = list(dict.fromkeys(list(available) + ALL_SCENES))
    if scene in known:
        return scene
    for name in known:
        try:
            if scene_short_name(name) == scene:
                return name
        except ValueError:
            continue
    raise DataError(f"unknown scene {scene!r}; expected one of: "
                    f"{', '.join(scene_short_name(s) for s in ALL_SCENES)} "
                    "(or the full drive name)")


def load_scene(root, scene: str) -> SceneData:
    """Load the cells, poses and (if present) the neighbour map of one scene."""
    _check_scene_name(scene)
    root = _check_root(root)
    for path in (cells_path(root, scene), poses_path(root, scene)):
        if not path.is_file():
            raise DataError(f"{path}: file not found (scene {scene} is not in {root})")
    dpath = directions_path(root, scene)
    return SceneData(
        scene=scene,
        cells=read_cells(cells_path(root, scene)),
        poses=read_poses(poses_path(root, scene)),
        directions=read_directions(dpath) if dpath.is_file() else None,
    )


def load_split(root, split_or_scenes: Union[str, Iterable[str]]) -> SplitData:
    """Load a split by name (``train`` / ``val`` / ``test``) or an explicit list of scenes.

    Enforces what the original split loaders assert: cell ids unique across the
    split, every pose's best cell present, and at least ``MIN_CELLS_PER_SPLIT``
    cells (the evaluation retrieves the top 10).
    """
    if isinstance(split_or_scenes, str):
        if split_or_scenes not in SPLITS:
            raise DataError(f"unknown split {split_or_scenes!r} "
                            f"(expected one of {', '.join(SPLITS)})")
        name, scenes = split_or_scenes, list(SPLITS[split_or_scenes])
    else:
        scenes = list(split_or_scenes)
        name = ",".join(scenes)
    if not scenes:
        raise DataError("a split needs at least one scene")
    loaded = [load_scene(root, s) for s in scenes]

    cells_by_id: Dict[str, Cell] = {}
    home: Dict[str, str] = {}  # cell id -> scene it came from, for the error message
    for data in loaded:
        for cell in data.cells:
            if cell.id in cells_by_id:
                raise DataError(
                    f"{cells_path(root, data.scene)}: cell id {cell.id!r} already used in "
                    f"{cells_path(root, home[cell.id])}; ids must be unique across a split"
                )
            cells_by_id[cell.id] = cell
            home[cell.id] = data.scene
    for data in loaded:
        for i, pose in enumerate(data.poses):
            if pose.cell_id not in cells_by_id:
                raise DataError(
                    f"{poses_path(root, data.scene)}: Pose {i}: best cell {pose.cell_id!r} is not "
                    f"in split {name}"
                )
    if len(cells_by_id) < MIN_CELLS_PER_SPLIT:
        raise DataError(
            f"{Path(root)}: split {name} has {len(cells_by_id)} cells; at least "
            f"{MIN_CELLS_PER_SPLIT} are needed"
        )
    directions = None
    if all(d.directions is not None for d in loaded):
        directions = {k: v for d in loaded for k, v in d.directions.items()}
    return SplitData(
        name=name,
        scenes=scenes,
        cells=[c for d in loaded for c in d.cells],
        poses=[p for d in loaded for p in d.poses],
        cells_by_id=cells_by_id,
        directions=directions,
    )


# --- writing -------------------------------------------------------------------------------


def neighbour_map(cells: Iterable[Cell]) -> DirectionMap:
    """The direction map (``direction/<scene>.json``): for every cell, the cell whose bbox
    minimum lies exactly ±10 m away in x and/or y, per direction word, or ``None``."""
    cells = list(cells)

    # Grid corners are whole metres in practice; rounding to 1 µm only absorbs float noise.
    def key(x, y):
        return (round(float(x), 6), round(float(y), 6))

    by_corner = {key(c.bbox_w[0], c.bbox_w[1]): c.id for c in cells}
    result: DirectionMap = {}
    for c in cells:
        x, y = c.bbox_w[0], c.bbox_w[1]
        result[c.id] = {
            word: by_corner.get(key(x + dx * NEIGHBOUR_STEP, y + dy * NEIGHBOUR_STEP))
            for word, (dx, dy) in NEIGHBOUR_OFFSETS.items()
        }
    return result


def _instance_scalar(value) -> np.integer:
    """Instance ids are numpy integers in the original files (int32, from the PLY files)."""
    value = int(value)
    if np.iinfo(np.int32).min <= value <= np.iinfo(np.int32).max:
        return np.int32(value)
    return np.int64(value)


def _vector(value, shape, dtype, what: str) -> np.ndarray:
    arr = np.array(value, dtype=dtype)  # a copy, so the file never shares memory with the caller
    if arr.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, arr.shape)):
        want = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
        raise _Invalid(f"{what} has shape {list(arr.shape)}, expected {want}")
    if not np.isfinite(arr).all():  # the reader refuses these, so never write them
        raise _Invalid(f"{what} contains NaN or infinite values")
    return arr


def _object_to_legacy(obj: Object3d) -> legacy.Object3d:
    xyz = _vector(obj.xyz, (None, 3), np.float64, "xyz")
    rgb = _vector(obj.rgb, (None, 3), np.float32, "rgb")
    if len(xyz) == 0 or len(rgb) != len(xyz):
        raise _Invalid(f"object {obj.id}: needs >= 1 point and as many colours as points")
    # Attribute order as set by the original constructor.
    return legacy.Object3d(
        id=int(obj.id), instance_id=_instance_scalar(obj.instance_id), xyz=xyz, rgb=rgb,
        label=str(obj.label)
    )


def _cell_to_legacy(cell: Cell) -> legacy.Cell:
    if not cell.objects:
        raise _Invalid(f"cell {cell.id!r} has no objects")
    return legacy.Cell(
        scene_name=str(cell.scene),
        id=str(cell.id),
        objects=[_object_to_legacy(o) for o in cell.objects],
        cell_size=np.float64(cell.cell_size),
        bbox_w=_vector(cell.bbox_w, (6,), np.float64, "bbox_w"),
    )


def _hint_to_legacy(h: Hint) -> legacy.DescriptionBestCell:
    attrs = dict(
        object_instance_id=_instance_scalar(h.object_instance_id),
        object_label=str(h.object_label),
        object_color_rgb=_vector(h.object_color_rgb, (3,), np.float32, "object_color_rgb"),
        object_color_text=str(h.object_color_text),
        direction=str(h.direction),
        offset_center=_vector(h.offset_center, (2,), np.float64, "offset_center"),
        offset_closest=_vector(h.offset_closest, (2,), np.float64, "offset_closest"),
    )
    if h.is_matched:
        if h.object_id is None or h.best_offset_center is None or h.best_offset_closest is None:
            raise _Invalid("a matched hint needs object_id, best_offset_center and "
                           "best_offset_closest")
        attrs["object_id"] = int(h.object_id)
    attrs["closest_point"] = _vector(h.closest_point, (2,), np.float64, "closest_point")
    if h.is_matched:
        attrs["best_offset_center"] = _vector(h.best_offset_center, (2,), np.float64,
                                              "best_offset_center")
        attrs["best_offset_closest"] = _vector(h.best_offset_closest, (2,), np.float64,
                                               "best_offset_closest")
    attrs["is_matched"] = bool(h.is_matched)
    return legacy.DescriptionBestCell(**attrs)


def _pose_to_legacy(p: Pose) -> legacy.Pose:
    return legacy.Pose(
        pose=_vector(p.pose, (3,), np.float64, "pose"),
        pose_w=_vector(p.pose_w, (3,), np.float64, "pose_w"),
        cell_id=str(p.cell_id),
        descriptions=[_hint_to_legacy(h) for h in p.hints],
        scene_name=str(p.scene),
        described_by=str(p.described_by),
    )


def _convert_all(items, convert, path: Path, what: str) -> list:
    try:
        return _convert_each(list(items), convert, what)
    except _Invalid as exc:
        raise DataError(f"{path}: cannot write {exc}") from None


def write_scene(root, scene: str, cells: List[Cell], poses: List[Pose], directions=True) -> None:
    """Write one scene in the original format.

    ``directions``: ``True`` writes ``direction/<scene>.json`` computed by
    :func:`neighbour_map`, a dict writes that map, ``False`` writes none.
    Everything is converted and pickled before the first file is replaced.
    """
    _check_scene_name(scene)
    root = Path(root)
    cpath, ppath = cells_path(root, scene), poses_path(root, scene)
    dpath = directions_path(root, scene)
    cells_bytes = legacy.dumps_legacy(_convert_all(cells, _cell_to_legacy, cpath, "Cell"))
    poses_bytes = legacy.dumps_legacy(_convert_all(poses, _pose_to_legacy, ppath, "Pose"))
    if directions is True:
        directions = neighbour_map(cells)
    json_bytes = (None if directions is False or directions is None
                  else json.dumps(directions, indent=4).encode())
    write_bytes(cpath, cells_bytes)
    write_bytes(ppath, poses_bytes)
    if json_bytes is not None:
        write_bytes(dpath, json_bytes)
