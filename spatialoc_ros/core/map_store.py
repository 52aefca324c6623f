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
chunk they fall in), then stored as float16 where :mod:`.cell_store` says. A
map that was served from memory before has its bank and gallery cached: the
store is filled from them, with nothing encoded again.
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
    key_of_gallery = gallery_key(bundle.coarse_weights, bank)
    key = store_key(key_of_gallery)
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
    if writer.rows == 0 and _copy_from_memory_caches(writer, Path(cache_root), bank,
                                                     key_of_gallery, ids, sizes, origins,
                                                     scenes, chunk):
        return CellStore(folder)
    if writer.rows:
        log.info("resuming the cell store of %d cells after row %d", len(ids), writer.rows)
    bar = tqdm(total=len(ids), initial=writer.rows, desc="cell store", unit="cell",
               disable=not progress, dynamic_ncols=True)
    try:
        while writer.rows < len(ids):
            # one chunk, cut where the scene changes (a store part holds one scene)
            start, stop = next(_runs_of_scenes(scenes, writer.rows, len(ids), chunk))
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


def _runs_of_scenes(scenes: Sequence[str], start: int, stop: int, chunk: int):
    """[a, b) spans of rows start..stop, each within one scene and at most ``chunk`` long."""
    a = start
    while a < stop:
        b = min(a + chunk, stop)
        cut = next((i for i in range(a + 1, b) if scenes[i] != scenes[a]), b)
        yield a, cut
        a = cut


def _copy_from_memory_caches(writer, root: Path, bank_key_: str, key_of_gallery: str,
                             ids, sizes, origins, scenes, chunk: int) -> bool:
    """Fill the store from the map's cached bank and gallery files (the map served from memory
    before: nothing to encode); False when they are not both there for these cells."""
    from .cell_bank import CellBank
    from .frozen_inputs import bank_file
    from .gallery import Gallery, gallery_file

    features = CellBank.load(bank_file(root, bank_key_))
    if features is None or features.ids != ids:
        return False
    gallery = Gallery.load(gallery_file(root, key_of_gallery))
    if gallery is None or gallery.ids != ids:
        return False
    from ..networks.outputs import CoarseOutputs

    log.info("filling the cell store of %d cells from the cached gallery", len(ids))
    d = gallery.descriptors
    for a, b in _runs_of_scenes(scenes, 0, len(ids), chunk):
        rows = torch.arange(a, b)
        part = CoarseOutputs(p_glo=d.p_glo[a:b], p_obj=d.p_obj[a:b], p_rel=d.p_rel[a:b],
                             p_mask=d.p_mask[a:b])
        writer.append(ids[a:b], scenes[a], part, features.batch(rows), sizes[a:b],
                      np.asarray(origins[a:b]))
    return True
