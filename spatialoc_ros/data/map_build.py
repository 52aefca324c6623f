"""``spatialoc map build``: a localization map from labelled point clouds.

1. Read every input cloud a chunk at a time (:mod:`.clouds`) and gather its points into
   objects keyed by (class, instance id), merging windows of one area as the KITTI360Pose
   generator merges KITTI-360's overlapping windows (README.md, "The synthetic city").
   Objects of classes with a voxel size are voxel-downsampled as the benchmark's objects
   are: each voxel of a fixed world grid becomes the mean of its points and colours,
   accumulated as sums and counts, so the result does not depend on how files or chunks
   split the cloud. Objects below their class's minimum point count are dropped.
2. Cut the objects into cells with the benchmark's own code (:mod:`.cells`): 30 m cubes on
   a 10 m grid, along the drive when one is given (``--trajectory``, as the benchmark
   places them) or else over the ground a person can stand on and 20 m beside it, at the
   drive's pose height above it (:func:`.cells.ground_cell_centers`); kept where an
   instance object is within 15 m and at least six objects fall inside. All of this happens
   in the clouds' own coordinates; ``--origin`` is added to the cells' boxes at the end, so
   it moves the map without changing it (a grid laid after adding it would move by whole
   grid steps, not by the origin).
3. Write ``map.json`` and ``cells.safetensors`` (:mod:`.map_folder`) into a temporary
   folder beside ``--out`` and rename it into place, so a failed build leaves nothing.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError
from . import constants as C
from .cells import (SceneIndex, SceneObject, close_locations, grid_cell_centers,
                    ground_cell_centers, make_cells, subsample_locations)
from .clouds import CloudFile, ReadCounts, coordinate_precision, find_clouds
from .labels import LabelMap, label_map

log = logging.getLogger(__name__)

# Ground a person can stand on: the cells are laid over it (README.md, "Your own map").
STANDING_CLASSES = ("road", "sidewalk", "parking")
GROUND_REACH_M = 20.0  # cells also centred this far beside it (the drive's reach 30 m)
_KEY_BITS = 21  # voxel keys of one object pack into an int64 while it spans < 2^21 voxels
_COMPACT_ROWS = 1_000_000  # merge an object's pending voxel rows beyond this many
FLOAT32_WARN_M = 0.05  # warn when float32 coordinates are coarser than this


class _Voxels:
    """One object's points: voxel sums and counts on a world grid, or the raw points."""

    def __init__(self, size: Optional[float], first_file: int = 0):
        self.size = size
        self.first_file = first_file  # the input file the object first appears in
        self.anchor: Optional[np.ndarray] = None
        self.keys: List[np.ndarray] = []  # int64 packed voxel keys (or raw point indices)
        self.sums: List[np.ndarray] = []  # float64 [n, 6]: xyz and rgb sums
        self.counts: List[np.ndarray] = []
        self.pending = 0  # rows not yet merged across chunks
        self.compacted = 0  # voxels after the last merge
        self.raw_points = 0

    def add(self, xyz: np.ndarray, rgb: np.ndarray) -> None:
        self.raw_points += len(xyz)
        values = np.concatenate([xyz, rgb.astype(np.float64)], axis=1)
        if self.size is None:
            self.sums.append(values)
            return
        q = np.floor(xyz / self.size).astype(np.int64)
        if self.anchor is None:
            self.anchor = q.min(axis=0) - (1 << (_KEY_BITS - 1))
        q -= self.anchor
        if q.min() < 0 or q.max() >= 1 << _KEY_BITS:
            raise DataError(f"one object spans more than {(1 << _KEY_BITS) * self.size / 1000:.0f}"
                            " km; check the instance ids of the cloud")
        keys = (q[:, 0] << (2 * _KEY_BITS)) | (q[:, 1] << _KEY_BITS) | q[:, 2]
        keys, values, counts = _merge(keys, values, np.ones(len(keys), np.int64))
        self.keys.append(keys)
        self.sums.append(values)
        self.counts.append(counts)
        self.pending += len(keys)
        if self.pending > max(_COMPACT_ROWS, 2 * self.compacted):
            self._compact()

    def _compact(self) -> None:
        keys, sums, counts = _merge(np.concatenate(self.keys), np.concatenate(self.sums),
                                    np.concatenate(self.counts))
        self.keys, self.sums, self.counts = [keys], [sums], [counts]
        self.pending = self.compacted = len(keys)

    def points(self) -> Tuple[np.ndarray, np.ndarray]:
        """(xyz float64, rgb float32): voxel means, in voxel-key order (or the raw points)."""
        if self.size is None:
            values = np.concatenate(self.sums)
        else:
            self._compact()
            values = self.sums[0] / self.counts[0][:, None]
        return values[:, :3], values[:, 3:].astype(np.float32)


def _merge(keys: np.ndarray, sums: np.ndarray, counts: np.ndarray):
    """Rows with equal voxel keys summed into one: (unique keys, sums, counts)."""
    uniq, inverse = np.unique(keys, return_inverse=True)
    merged = np.stack([np.bincount(inverse, sums[:, j], len(uniq)) for j in range(6)], 1)
    return uniq, merged, np.bincount(inverse, counts, len(uniq)).astype(np.int64)


@dataclass
class BuildReport:
    sources: List[dict] = field(default_factory=list)
    counts: ReadCounts = field(default_factory=ReadCounts)
    objects: Dict[str, int] = field(default_factory=dict)
    small_objects: int = 0
    centres: int = 0
    cells: int = 0
    seconds: Dict[str, float] = field(default_factory=dict)


def gather_objects(files: Sequence[Path], labels: LabelMap, report: BuildReport,
                   progress: bool = True, downsample: bool = True) -> List[SceneObject]:
    """Scene objects of all files: merged by (class, instance) and voxel-downsampled, in the
    original generator's scene order: by the file they first appear in, then class, then
    instance id."""
    from tqdm import tqdm

    from ..digest import file_digest

    clouds = [CloudFile(f) for f in files]
    for cloud in clouds:
        cloud.check_fields(labels)
    total = sum(c.num_points for c in clouds)
    voxel = [C.CLASSES[n][2] if downsample else None for n in C.CLASS_NAMES]
    objects: Dict[Tuple[int, int], _Voxels] = {}
    bar = tqdm(total=total, desc="read points", unit="pt", unit_scale=True, disable=not progress,
               dynamic_ncols=True)
    for number, cloud in enumerate(clouds):
        spacing = coordinate_precision(cloud)
        if spacing is not None and spacing > FLOAT32_WARN_M:
            log.warning("%s: float32 coordinates this far from 0 are only %.2f m apart; store "
                        "them as double (or nearer 0) for an exact map", cloud.path, spacing)
        report.sources.append({"path": str(cloud.path), "sha256": file_digest(cloud.path, 64),
                               "points": cloud.num_points})
        for chunk in cloud.chunks(labels, report.counts):
            _add_chunk(objects, chunk, voxel, number)
            bar.update(report.counts.points - bar.n)
        cloud.release()
        bar.update(report.counts.points - bar.n)
    bar.close()
    scene = []
    for (cls, instance), acc in sorted(objects.items(), key=lambda kv: (kv[1].first_file, kv[0])):
        name = C.CLASS_NAMES[cls]
        if acc.raw_points < C.CLASSES[name][1]:
            report.small_objects += 1
            continue
        xyz, rgb = acc.points()
        scene.append(SceneObject(instance, name, xyz, rgb, stuff=name in labels.stuff))
        report.objects[name] = report.objects.get(name, 0) + 1
    return scene


def _add_chunk(objects, chunk, voxel, file_number: int) -> None:
    order = np.lexsort((chunk.instance, chunk.cls))  # any int64 instance id, negative too
    cls_sorted, inst_sorted = chunk.cls[order], chunk.instance[order]
    starts = np.flatnonzero(np.r_[True, (cls_sorted[1:] != cls_sorted[:-1])
                                  | (inst_sorted[1:] != inst_sorted[:-1])])
    ends = np.r_[starts[1:], len(order)]
    xyz = chunk.xyz
    for a, b in zip(starts, ends):
        rows = order[a:b]
        cls, instance = int(chunk.cls[rows[0]]), int(chunk.instance[rows[0]])
        acc = objects.get((cls, instance))
        if acc is None:
            acc = objects[(cls, instance)] = _Voxels(voxel[cls], file_number)
        acc.add(xyz[rows], chunk.rgb[rows])


def standing_points(objects: Sequence[SceneObject]) -> np.ndarray:
    """Points of the ground a person can stand on; every point where the map has none."""
    ground = [o.xyz for o in objects if o.label in STANDING_CLASSES]
    if not ground:
        log.warning("the map has no %s points: cells are laid over all of it",
                    "/".join(STANDING_CLASSES))
        ground = [o.xyz for o in objects]
    return np.concatenate(ground) if ground else np.zeros((0, 3))


def read_trajectory(path) -> np.ndarray:
    """Positions [T, 3] of a drive: KITTI-360's ``poses.txt`` (a frame number and a 3x4 pose
    matrix per line) or plain ``x y z`` lines, in the clouds' coordinates."""
    try:
        rows = np.loadtxt(path, ndmin=2, dtype=np.float64)
    except OSError as exc:
        raise DataError(f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        raise DataError(f"{path}: not a table of numbers ({exc})") from None
    if rows.shape[1] == 13:
        xyz = rows[:, [4, 8, 12]]
    elif rows.shape[1] == 3:
        xyz = rows
    else:
        raise DataError(f"{path}: {rows.shape[1]} columns; a trajectory is KITTI-360's poses.txt "
                        "(13 columns) or x y z (3 columns)")
    if len(xyz) == 0 or not np.isfinite(xyz).all():
        raise DataError(f"{path}: empty, or a position is NaN or infinite")
    return xyz


def cell_centres(index: SceneIndex, objects: Sequence[SceneObject],
                 trajectory: Optional[np.ndarray]) -> np.ndarray:
    """The benchmark's centres along a drive when there is one, else over the standing
    ground and beside it; either way only where an instance object is within 15 m.

    Measured on the benchmark's test scenes (README.md, "Your own map"), the placement
    without a drive localizes the scenes' descriptions as well as the drive's does."""
    if trajectory is not None:
        locations = close_locations(index, subsample_locations(trajectory, C.CELL_DIST))
        return grid_cell_centers(locations) if len(locations) else np.zeros((0, 3))
    return close_locations(index, ground_cell_centers(standing_points(objects), GROUND_REACH_M))


def cut_cells(objects: Sequence[SceneObject], name: str, report: BuildReport,
              trajectory: Optional[np.ndarray] = None, progress: bool = True) -> list:
    from tqdm import tqdm

    if not any(not o.is_stuff for o in objects):
        raise DataError("the cloud has no instance objects (buildings, poles, ...): cells are "
                        "only made near them; check the label mapping")
    index = SceneIndex(objects)
    centres = cell_centres(index, objects, trajectory)
    report.centres = len(centres)
    with tqdm(total=len(centres), desc="cut cells", unit="cell", disable=not progress,
              dynamic_ncols=True) as bar:
        cells = make_cells(index, centres, name, progress=bar.update)
    report.cells = len(cells)
    if not cells:
        raise DataError(f"no cell holds {C.NUM_MENTIONED} objects: the map is too small or too "
                        "sparse")
    return cells


def build_map(inputs: Sequence, out, labels: Optional[str] = None, frame_id: str = "map",
              origin: Sequence[float] = (0.0, 0.0, 0.0), name: str = "map",
              trajectory=None, force: bool = False, progress: bool = True,
              downsample: bool = True) -> dict:
    """Build the map folder ``out`` from labelled clouds; returns its ``map.json`` contents.

    ``downsample=False`` keeps every point (for clouds whose objects are already at the
    benchmark's density, such as the synthetic scenes of ``data synth --ply``)."""
    out = check_map_out(out, name, force)
    origin_arr = np.asarray(origin, dtype=np.float64).reshape(3)
    if not np.isfinite(origin_arr).all():
        raise DataError("--origin must be three finite numbers")
    mapping = label_map(labels)
    files = find_clouds(inputs)
    drive = None if trajectory is None else read_trajectory(trajectory)
    report = BuildReport()
    t0 = time.perf_counter()
    objects = gather_objects(files, mapping, report, progress, downsample)
    _warn_dropped(report.counts, mapping)
    t1 = time.perf_counter()
    try:
        cells = cut_cells(objects, name, report, drive, progress)
    except DataError as exc:  # about the clouds as a whole: name them
        more = f" and {len(files) - 1} more file(s)" if len(files) > 1 else ""
        raise DataError(f"{files[0]}{more}: {exc}") from None
    for cell in cells:  # cell points are relative to the box: only the box moves
        cell.bbox_w = cell.bbox_w + np.concatenate([origin_arr, origin_arr])
    t2 = time.perf_counter()
    report.seconds = {"read": t1 - t0, "cells": t2 - t1}
    meta = _metadata(name, frame_id, origin_arr, mapping, report, len(objects))
    meta["cell_parameters"]["centres"] = ("along the drive in " + str(trajectory)
                                          if drive is not None else "over the standing ground")
    if not downsample:
        meta["cell_parameters"]["voxel_m"] = None
    publish_map(out, cells, meta)
    meta["seconds"]["total"] = time.perf_counter() - t0
    return meta


def check_map_out(out, name: str, force: bool) -> Path:
    """``out`` as a Path, once it is clear a map named ``name`` may be written there: empty or
    missing, or (with ``force``) a map folder; DataError otherwise."""
    from .map_folder import MAP_FILE, is_map_folder

    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        if not force:
            raise DataError(f"{out}: already exists; choose another --out or add --force")
        if not is_map_folder(out):  # --force replaces a map, never other files
            raise DataError(f"{out}: not a map folder (no {MAP_FILE}); --force only replaces "
                            "a map: choose another --out")
    if not name.isidentifier():
        raise DataError(f"map name {name!r}: use letters, digits and _")
    return out


def publish_map(out: Path, cells, meta: dict) -> None:
    """Write the map folder beside ``out`` and rename it into place (a reader never sees half
    a map; an old map at ``out`` is replaced)."""
    from .map_folder import write_map_folder

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_map_folder(tmp, cells, meta)
        _readable(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _readable(folder: Path) -> None:
    """Folder and files with the permissions of a normally created folder (the temporary
    folder is private to its owner)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def _warn_dropped(counts: ReadCounts, mapping: LabelMap) -> None:
    if counts.non_finite:
        log.warning("dropped %d points with NaN or infinite coordinates", counts.non_finite)
    if counts.unlisted and mapping.warn_unlisted:
        listed = ", ".join(f"{k} ({n} points)" for k, n in sorted(counts.unlisted.items())[:8])
        more = len(counts.unlisted) - 8
        log.warning("class values not in the label mapping (%s) were ignored: %s%s",
                    mapping.source, listed, f" and {more} more" if more > 0 else "")


def _cell_parameters() -> dict:
    """How the benchmark's procedure cuts cells (recorded in ``map.json``)."""
    return {"size_m": C.CELL_SIZE, "grid_m": C.CELL_DIST,
            "min_objects": C.NUM_MENTIONED,
            "instance_inside_fraction": C.INSIDE_FRACTION,
            "stuff_min_points": C.STUFF_MIN_POINTS,
            "dbscan_eps_m": C.DBSCAN_EPS,
            "dbscan_min_points": C.DBSCAN_MIN_SAMPLES,
            "standing_classes": list(STANDING_CLASSES),
            "voxel_m": {n: C.CLASSES[n][2] for n in C.CLASS_NAMES}}


def _metadata(name, frame_id, origin, mapping: LabelMap, report: BuildReport,
              num_objects: int) -> dict:
    counts = report.counts
    return {
        "name": name,
        "frame_id": frame_id,
        "origin": origin.tolist(),
        "sources": report.sources,
        "labels": mapping.to_dict(),
        "cell_parameters": _cell_parameters(),
        "counts": {"points": counts.points, "non_finite_dropped": counts.non_finite,
                   "ignored_points": counts.ignored,
                   "unlisted_points": sum(counts.unlisted.values()),
                   "objects": num_objects, "objects_by_class": report.objects,
                   "objects_below_min_points": report.small_objects,
                   "cell_centres": report.centres, "cells": report.cells},
        "seconds": dict(report.seconds),
    }
