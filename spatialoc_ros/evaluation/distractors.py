"""Distractor cells for the scale benchmark: real cells of other synthetic cities, encoded.

A city-sized gallery holds far more cells than a test split, and every one of
them can look like the place described. To measure that, the benchmark's test
gallery is grown with cells that are certainly wrong answers yet real: the
cells of other cities made by the same generator (:mod:`..data.synth`, the
benchmark preset) with other seeds (1, 2, ...), every scene of each, cut by the
benchmark's own procedure. Their poses are not needed and not generated.

Cells are encoded with the weights under test (frozen PointNet++ features,
coarse descriptors) and appended to a memory-mapped
:class:`~..core.cell_store.CellStore` in a fixed order (seed, then scene), so
the first n rows are the same whatever count was asked for, and a build that
was stopped resumes where it stopped. The store is keyed by what its rows were
computed from (weights' bytes, generator version, preset, sampling seed).

One worker process generates the next scene's cells while this process encodes
the current one (with every core's torch threads: generating takes about half a
core).
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
from pathlib import Path
from typing import Iterator, Tuple

import numpy as np

from ..core.cell_store import CellStore, CellStoreWriter

DISTRACTOR_FORMAT = 1
PRESET = "benchmark"
MAX_CAPACITY = 1_000_000  # rows preallocated (sparse files: only written rows use disk)
FIRST_SEED = 1  # seed 0 is the benchmark itself


def distractor_key(bundle) -> str:
    """Digest of everything the distractor rows depend on."""
    from ..digest import file_digest

    parts = [str(DISTRACTOR_FORMAT), PRESET, str(bundle.max_objects), str(bundle.seed),
             bundle.pointnet_info["digest"], file_digest(bundle.coarse_weights, 64)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _scene_jobs(first_seed: int = FIRST_SEED) -> Iterator[Tuple[int, str]]:
    from ..data.constants import ALL_SCENES

    seed = first_seed
    while True:
        for scene in ALL_SCENES:
            yield seed, scene
        seed += 1


def _generate(job):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ..data.synth import build_scene

    seed, scene = job
    cells, _, _ = build_scene(scene, PRESET, seed, poses=False)
    return seed, scene, cells


def remaining_jobs(writer: CellStoreWriter) -> Iterator[Tuple[int, str]]:
    """(seed, scene) of the scenes still to encode, in order: those the store does not hold
    yet (a stopped build resumes after its last complete scene; a part is [seed, scene,
    rows])."""
    done = {(int(part[0]), str(part[1])) for part in writer.meta.get("parts", [])}
    return (job for job in _scene_jobs() if job not in done)


def build_distractors(folder, count: int, bundle, progress: bool = True,
                      device="cpu") -> CellStore:
    """A store of at least ``count`` distractor rows in ``folder`` (built or extended as
    needed; see the module docstring)."""
    from tqdm import tqdm

    from ..core.cell_store import open_store

    key = distractor_key(bundle)
    folder = Path(folder)
    existing = open_store(folder)
    if existing is not None and existing.key == key and len(existing) >= count:
        return existing  # read-only: another process may still be extending it
    writer = CellStoreWriter(folder, MAX_CAPACITY, bundle.max_objects,
                             bundle.coarse.cfg.d, bundle.coarse.cfg.point_dim, key=key)
    if writer.rows >= count:
        return CellStore(folder)
    bar = tqdm(total=count, initial=writer.rows, desc="distractor cells", unit="cell",
               disable=not progress, dynamic_ncols=True)
    ctx = mp.get_context("spawn")
    pending = remaining_jobs(writer)
    # torch keeps every core although one process generates alongside: generating a scene
    # takes about half a core, and PointNet++ on one thread left the other half idle
    # (11.6 cells/s against 18.6-19.9 with two threads, on 2 cores)
    try:
        _encode_scenes(pool_jobs=pending, ctx=ctx, writer=writer, count=count, bundle=bundle,
                       device=device, bar=bar)
    finally:
        bar.close()
    return CellStore(folder)


def _encode_scenes(pool_jobs, ctx, writer, count, bundle, device, bar) -> None:
    import torch

    from ..core.cell_bank import build_cell_bank
    from ..core.encoding import encode_gallery

    with ctx.Pool(1) as pool:
        # one scene generated ahead, no more: a scene's cells are a few hundred MB
        ahead = pool.apply_async(_generate, (next(pool_jobs),))
        while writer.rows < count:
            seed, scene, cells = ahead.get()
            ahead = pool.apply_async(_generate, (next(pool_jobs),))
            bank = build_cell_bank(cells, bundle.pointnet, bundle.max_objects, bundle.seed,
                                   progress=False)
            desc = encode_gallery(bundle.coarse, bank, device=device)
            rows = torch.arange(len(bank))
            fields = bank.batch(rows)
            ids = [f"s{seed}/{c.id}" for c in cells]
            size = np.array([c.cell_size for c in cells], dtype=np.float64)
            origin = np.stack([c.bbox_w[:2] for c in cells]).astype(np.float64)
            written = writer.append(ids, f"s{seed}/{scene}", desc, fields, size, origin)
            writer.meta.setdefault("parts", []).append([seed, scene, written])
            writer.flush()
            bar.update(written)
