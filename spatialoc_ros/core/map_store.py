"""A map's encoded cells served from a memory-mapped store: maps larger than memory.

In memory, a gallery and its cell bank take about 87 KB of float32 per cell
(PointNet++ features, F_Object_P, F_Relation_P): 8.7 GB at 100,000 cells. A
map above :data:`STORE_MIN_CELLS` cells (or any map, asked for) is served from
a :class:`~.cell_store.CellStore` instead: the global descriptors in memory for
the retriever's index, everything else read for the rows a query touches.

The store is built the first time, in chunks of :data:`CHUNK_CELLS` cells
(PointNet++ features, then coarse descriptors, appended to the store), so the
build's memory does not grow with the map and a build that was stopped resumes
after its last complete chunk. It sits in the map's cache folder, keyed by
what the in-memory gallery is keyed by (the cells' content, the PointNet++ and
coarse weights, the sampling seed): every feature is computed exactly as for
the in-memory gallery (objects are sampled with seeds of their own, whatever
chunk they fall in), then stored as float16 where :mod:`.cell_store` says.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .cell_store import STORE_FORMAT, CellStore, CellStoreWriter, open_store
from .map_source import cell_columns, cell_ids

log = logging.getLogger(__name__)

STORE_MIN_CELLS = 20_000  # "auto" serves larger maps from the store (about 1.7 GB in memory)
CHUNK_CELLS = 1024  # cells encoded per step of a store build
CELL_ROWS = ("auto", "memory", "store")


def use_store(mode: str, cells: int) -> bool:
    """Whether a map of ``cells`` cells is served from the store under ``mode`` (one of
    :data:`CELL_ROWS`)."""
    from ..errors import SpatialocError

    if mode not in CELL_ROWS:
        raise SpatialocError(f"cell rows {mode!r}: expected one of {', '.join(CELL_ROWS)}")
    return mode == "store" or (mode == "auto" and cells > STORE_MIN_CELLS)


def store_key(gallery_key: str) -> str:
    return hashlib.sha256(f"map-store|{STORE_FORMAT}|{gallery_key}".encode()).hexdigest()[:16]


def load_or_build_map_store(bundle, cells: Sequence, cache_root, split: str,
                            progress: bool = True, chunk: int = CHUNK_CELLS) -> CellStore:
    """The store of ``cells`` under the weights ``bundle`` (a :class:`.weights.WeightsBundle`)
    in ``cache_root``: opened when complete, else built or resumed (see the module
    docstring)."""
    from tqdm import tqdm

    from .cell_bank import build_cell_bank
    from .encoding import encode_gallery
    from .frozen_inputs import bank_key
    from .gallery import gallery_key

    ids = cell_ids(cells)
    bank = bank_key(split, bundle.pointnet_info["digest"], bundle.max_objects, bundle.seed, cells)
    key = store_key(gallery_key(bundle.coarse_weights, bank))
    folder = Path(cache_root) / f"store-{key}"
    store = open_store(folder)
    if store is not None and store.key == key and store.ids == ids:
        return store
    sizes, origins, scenes = cell_columns(cells)
    shape = (len(ids), bundle.max_objects, bundle.coarse.cfg.d, bundle.coarse.cfg.point_dim)
    writer = CellStoreWriter(folder, *shape, key=key)
    if writer.meta["ids"] != ids[:writer.rows]:  # rows of other cells (a damaged store): anew
        shutil.rmtree(folder)
        writer = CellStoreWriter(folder, *shape, key=key)
    if writer.rows:
        log.info("resuming the cell store of %d cells after row %d", len(ids), writer.rows)
    bar = tqdm(total=len(ids), initial=writer.rows, desc="cell store", unit="cell",
               disable=not progress, dynamic_ncols=True)
    try:
        while writer.rows < len(ids):
            start = writer.rows
            # one chunk, cut where the scene changes (a store part holds one scene)
            stop = min(start + chunk, len(ids))
            same = [i for i in range(start + 1, stop) if scenes[i] != scenes[start]]
            stop = same[0] if same else stop
            part = [cells[i] for i in range(start, stop)]
            features = build_cell_bank(part, bundle.pointnet, bundle.max_objects, bundle.seed,
                                       progress=False)
            descriptors = encode_gallery(bundle.coarse, features, device=bundle.device)
            writer.append(ids[start:stop], scenes[start], descriptors,
                          features.batch(torch.arange(len(part))), sizes[start:stop],
                          np.asarray(origins[start:stop]))
            bar.update(stop - start)
    finally:
        bar.close()
    return CellStore(folder)
