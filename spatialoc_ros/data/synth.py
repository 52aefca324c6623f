"""The synthetic city benchmark: a KITTI360Pose-format dataset generated here.

Each of the nine KITTI-360 scene names gets its own procedural city
(:mod:`.city`); the benchmark generation procedure then runs on it unchanged
(:mod:`.cells`, :mod:`.poses`). Presets trade size for time; the same seed
gives the same files.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from . import constants as C


@dataclass(frozen=True)
class Preset:
    drive_m: Dict[str, float]  # length of the drive per scene short name
    description: str


# District mixtures per scene (urban, suburban, industrial, rural), loosely after the
# character of the real drives; every scene mixes all four so classes recur everywhere.
DISTRICTS = {
    "0000": {"urban": 0.25, "suburban": 0.45, "industrial": 0.1, "rural": 0.2},
    "0002": {"urban": 0.2, "suburban": 0.4, "industrial": 0.2, "rural": 0.2},
    "0003": {"urban": 0.3, "suburban": 0.4, "industrial": 0.1, "rural": 0.2},
    "0004": {"urban": 0.2, "suburban": 0.35, "industrial": 0.15, "rural": 0.3},
    "0005": {"urban": 0.3, "suburban": 0.4, "industrial": 0.15, "rural": 0.15},
    "0006": {"urban": 0.35, "suburban": 0.35, "industrial": 0.1, "rural": 0.2},
    "0007": {"urban": 0.1, "suburban": 0.25, "industrial": 0.25, "rural": 0.4},
    "0009": {"urban": 0.3, "suburban": 0.45, "industrial": 0.1, "rural": 0.15},
    "0010": {"urban": 0.25, "suburban": 0.4, "industrial": 0.15, "rural": 0.2},
}


def _lengths(scale: float) -> Dict[str, float]:
    # relative drive lengths follow the real scenes' query counts
    base = {"0000": 1.3, "0002": 1.4, "0003": 0.7, "0004": 1.5, "0005": 0.9,
            "0006": 1.1, "0007": 1.3, "0009": 1.1, "0010": 0.8}
    return {k: v * scale for k, v in base.items()}


PRESETS = {
    # the validation split has one scene; its longer drive gives it the 10 cells a split needs
    "tiny": Preset({k: 100.0 if k == "0010" else 50.0 for k in DISTRICTS},
                   "all 9 scenes, a few cells each (seconds; for tests)"),
    "small": Preset(_lengths(260.0), "a few hundred cells (a few minutes; the demo map)"),
    "benchmark": Preset(_lengths(4000.0),
                        "close to KITTI360Pose in size (about 20 minutes on 2 cores)"),
}


def build_scene(scene: str, preset: str, seed: int, progress_queue=None, ply_dir=None,
                ply_copies: int = 1, poses: bool = True):
    """Generate one scene: (cells, poses, timing dict); with ``ply_dir``, also write the scene as
    KITTI-360-style labelled PLY windows and its queries (:mod:`.scene_ply`). ``poses=False``
    cuts the cells only (poses come back empty)."""
    from .cells import (SceneIndex, close_locations, grid_cell_centers, make_cells,
                        subsample_locations)
    from .city import generate_city
    from .poses import make_poses

    short = C.scene_short_name(scene)
    rng = np.random.default_rng([seed, C.ALL_SCENES.index(scene)])
    t0 = time.perf_counter()
    city = generate_city(rng, PRESETS[preset].drive_m[short], DISTRICTS[short])
    index = SceneIndex(city.objects)
    cell_locs = close_locations(index, subsample_locations(city.trajectory, C.CELL_DIST))
    pose_locs = close_locations(index, subsample_locations(city.trajectory, C.POSE_DIST))
    centers = grid_cell_centers(cell_locs)
    t1 = time.perf_counter()

    def tick(n):
        if progress_queue is not None:
            progress_queue.put(n)

    cells = make_cells(index, centers, short, progress=tick)
    if not poses:
        return cells, [], {"city_s": t1 - t0, "cells_s": time.perf_counter() - t1,
                           "objects": len(city.objects)}
    poses = make_poses(index, cells, pose_locs, rng, progress=tick)
    if ply_dir is not None:
        from .scene_ply import write_scene_ply

        write_scene_ply(ply_dir, scene, city.objects, city.trajectory, poses,
                        copies=ply_copies)
    timing = {"city_s": t1 - t0, "cells_s": time.perf_counter() - t1, "objects": len(city.objects)}
    return cells, poses, timing


def _work_units(scene: str, preset: str) -> int:
    """A rough count of progress ticks (cell centres + pose locations) for the progress bar."""
    length = PRESETS[preset].drive_m[C.scene_short_name(scene)]
    return int(length / C.CELL_DIST * 5.5 + length / C.POSE_DIST)


def _run_one(args):
    scene, preset, seed, out, queue, ply_dir, ply_copies = args
    from .kitti360pose import write_scene

    cells, poses, timing = build_scene(scene, preset, seed, queue, ply_dir, ply_copies)
    write_scene(out, scene, cells, poses)
    return scene, len(cells), len(poses), timing


def synthesize(preset: str, seed: int, out, workers: Optional[int] = None,
               progress: bool = True, ply_dir=None, ply_copies: int = 1,
               scenes: Optional[Sequence[str]] = None) -> dict:
    """Write the preset's dataset to ``out`` (a KITTI360Pose folder) and return a summary;
    ``ply_dir`` also gets each scene as labelled PLY windows (:mod:`.scene_ply`)."""
    from tqdm import tqdm

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from .kitti360pose import resolve_scene

    chosen = [resolve_scene(s, C.ALL_SCENES) for s in scenes] if scenes else C.ALL_SCENES
    scenes = sorted(chosen, key=lambda s: -PRESETS[preset].drive_m[C.scene_short_name(s)])
    workers = workers or min(len(scenes), os.cpu_count() or 1)
    start = time.perf_counter()
    summary = {"preset": preset, "seed": seed, "out": str(out), "scenes": {}}
    bar = tqdm(total=sum(_work_units(s, preset) for s in scenes), desc=f"synth {preset}",
               unit="cell", disable=not progress, dynamic_ncols=True)
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        queue = manager.Queue()
        jobs = [(s, preset, seed, str(out), queue, None if ply_dir is None else str(ply_dir),
                 ply_copies) for s in scenes]
        with ctx.Pool(workers, initializer=_quiet_worker) as pool:
            pending = pool.imap_unordered(_run_one, jobs)
            done = 0
            while done < len(jobs):
                try:
                    scene, ncells, nposes, timing = pending.next(timeout=0.2)
                    summary["scenes"][scene] = {"cells": ncells, "poses": nposes, **timing}
                    done += 1
                except mp.TimeoutError:
                    pass
                while not queue.empty():
                    bar.update(min(queue.get(), max(0, bar.total - bar.n)))
    bar.update(max(0, bar.total - bar.n))
    bar.close()
    summary["seconds"] = time.perf_counter() - start
    return summary


def _quiet_worker():
    # one thread per worker process: the pool already uses every core
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import open3d as o3d

        o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    except Exception:  # pragma: no cover - open3d is a hard dependency; this only tunes logging
        pass
