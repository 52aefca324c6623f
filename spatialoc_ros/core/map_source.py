"""Where the Localizer and the node read a map's cells from: the map-source seam.

A map source gives the cells of a map (the gallery), their lookup by id, the
descriptions recorded with the map when it has any (the demo and the benchmark
ask them), a name for cache files and the frame its positions are in. Two sources
exist: a KITTI360Pose folder (``cells/``, ``poses/``, ``direction/``; all its
scenes or those named) and a folder built by ``spatialoc map build`` from labelled
point clouds (``map.json``). Other formats plug in by adding a class with the same
attributes and a test in :func:`open_map` that recognises their folders.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Dict, List, Optional, Protocol, Sequence, runtime_checkable

from ..errors import SpatialocError

DEFAULT_FRAME = "map"


@runtime_checkable
class MapSource(Protocol):
    """What serving needs of a map."""

    path: Path
    name: str  # names the map's cache files: a benchmark split ("train", "val", "test") or "map"
    frame_id: str  # the frame its world coordinates are in
    scenes: List[str]
    # Sequence[Cell], the gallery in a fixed order: a list, or a sequence reading each cell when
    # asked for, with the columns of :func:`cell_columns` and :func:`cell_ids` and a
    # ``content_digest`` (a built map)
    cells: Sequence
    cells_by_id: Mapping[str, object]
    poses: List  # List[Pose]: descriptions recorded with the map (may be empty)


def split_label(scenes: Sequence[str]) -> str:
    """The benchmark split whose scenes these are (it names the cache files), else "map"."""
    from ..data.constants import SPLITS, scene_short_name

    short = sorted(s if len(s) == 4 else scene_short_name(s) for s in scenes)
    for name, split_scenes in SPLITS.items():
        if sorted(s if len(s) == 4 else scene_short_name(s) for s in split_scenes) == short:
            return name
    return "map"


class KittiPoseMap:
    """A KITTI360Pose folder (all scenes with a cells and a poses file, or the named ones) as a
    map."""

    def __init__(self, root, scenes: Optional[Sequence[str]] = None,
                 frame_id: str = DEFAULT_FRAME):
        from ..data.kitti360pose import available_scenes, resolve_scene

        self.path = Path(root)
        available = available_scenes(self.path)
        chosen = [resolve_scene(s, available) for s in scenes] if scenes else available
        if not chosen:
            raise SpatialocError(f"{root}: no scene with both a cells and a poses file")
        self.scenes = list(chosen)
        self.frame_id = frame_id
        self.name = split_label(self.scenes)
        self._split = None

    def load(self) -> "KittiPoseMap":
        """Read the scene files (the slow part), once."""
        if self._split is None:
            from ..data.kitti360pose import load_split

            self._split = load_split(self.path, self.scenes)
        return self

    @property
    def cells(self) -> List:
        return self.load()._split.cells

    @property
    def cells_by_id(self) -> Dict[str, object]:
        return self.load()._split.cells_by_id

    @property
    def poses(self) -> List:
        return self.load()._split.poses


class BuiltMap:
    """A map folder written by ``spatialoc map build`` (``map.json``, ``cells.safetensors``).

    Its frame and origin come from ``map.json``; its cells' world coordinates already include
    the origin. Its cells are read from the memory-mapped file when asked for
    (:class:`~..data.map_folder.MapCells`): a start reads the small per-cell arrays only. It
    has no recorded descriptions; ``spatialoc eval --map --queries`` brings them.
    """

    def __init__(self, root):
        from ..data.map_folder import read_map_meta

        self.path = Path(root)
        self.meta = read_map_meta(self.path)
        self.name = str(self.meta.get("name", "map"))
        self.frame_id = str(self.meta.get("frame_id", DEFAULT_FRAME))
        self.scenes = [self.name]
        self.poses: List = []
        self._cells = None

    def load(self) -> "BuiltMap":
        if self._cells is None:
            from ..data.map_folder import MapCells

            recorded = (self.meta.get("cells_file") or {}).get("sha256", "")
            self._cells = MapCells(self.path, self.name, str(recorded))
            self._by_id = CellsById(self._cells)
        return self

    @property
    def cells(self) -> Sequence:
        return self.load()._cells

    @property
    def cells_by_id(self) -> Mapping[str, object]:
        return self.load()._by_id


class CellsById(Mapping):
    """A cell sequence looked up by cell id (each cell read when it is asked for)."""

    def __init__(self, cells: Sequence):
        self._cells = cells
        self._row = {cid: i for i, cid in enumerate(cell_ids(cells))}

    def __getitem__(self, cell_id: str):
        return self._cells[self._row[cell_id]]

    def __contains__(self, cell_id) -> bool:
        return cell_id in self._row

    def __iter__(self):
        return iter(self._row)

    def __len__(self) -> int:
        return len(self._row)


def cell_ids(cells: Sequence) -> List[str]:
    """The ids of a map's cells, in order (from its id column when it has one: nothing read)."""
    ids = getattr(cells, "ids", None)
    return list(ids) if ids is not None else [c.id for c in cells]


def cells_in_order(source, ids: Sequence[str]) -> Sequence:
    """The map's cells in the order of ``ids`` (a gallery's): the map's own sequence when it is
    already in that order (nothing read), else a list looked up by id."""
    if cell_ids(source.cells) == list(ids):
        return source.cells
    return [source.cells_by_id[i] for i in ids]


def cell_boxes(cells: Sequence):
    """float64 [C, 6] world boxes of a map's cells (from its column when it has one)."""
    import numpy as np

    boxes = getattr(cells, "boxes", None)
    if boxes is not None:
        return np.asarray(boxes, dtype=np.float64)
    return np.stack([c.bbox_w for c in cells]).astype(np.float64)


def cell_columns(cells: Sequence):
    """(cell sizes float64 [C], origins float64 [C, 2], scene names [C]) of a map's cells, from
    its columns when it has them (a built map: no cell read), else from each cell."""
    import numpy as np

    if all(hasattr(cells, k) for k in ("sizes", "origins", "scenes")):
        return (np.asarray(cells.sizes, dtype=np.float64),
                np.asarray(cells.origins, dtype=np.float64), list(cells.scenes))
    return (np.array([c.cell_size for c in cells], dtype=np.float64),
            np.stack([c.bbox_w[:2] for c in cells]).astype(np.float64),
            [c.scene for c in cells])


def is_kitti360pose_folder(path: Path) -> bool:
    return (path / "cells").is_dir()


def open_map(path, scenes: Optional[Sequence[str]] = None,
             frame_id: str = DEFAULT_FRAME) -> MapSource:
    """The map source of a folder, by its contents; one clear error for anything else.

    The scene files are read on first access to the cells, so a caller can check
    other inputs (the weights) before paying for it.
    """
    root = Path(path)
    if not root.is_dir():
        raise SpatialocError(f"{path}: no such map folder")
    from ..data.map_folder import is_map_folder

    if is_map_folder(root):
        built = BuiltMap(root)
        if scenes and list(scenes) != [built.name]:
            raise SpatialocError(f"{path}: a built map has one scene ({built.name}); leave out "
                                 "the scenes")
        return built
    if is_kitti360pose_folder(root):
        return KittiPoseMap(root, scenes, frame_id)
    raise SpatialocError(f"{path}: not a map folder (expected a map built by 'spatialoc map "
                         "build', with map.json, or a KITTI360Pose folder with cells/ and "
                         "poses/)")
