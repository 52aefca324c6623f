"""The frozen inputs of serving, training and evaluation, computed once and cached on disk.

* token embeddings of every hint sentence (:class:`.text_cache.TextCache`), per
  text encoder (its name carries a fingerprint of its weights);
* per set of cells, a :class:`.cell_bank.CellBank` of PointNet++ features,
  keyed by the PointNet++ weights' bytes, the slots, the sampling seed and the
  cells' content (:func:`~spatialoc_ros.digest.cells_digest`), so new weights or a changed
  map never reuse stale features.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Dict, Sequence, Tuple

from .cell_bank import CellBank, build_cell_bank
from ..digest import cells_digest, file_digest
from .map_source import cell_ids

log = logging.getLogger(__name__)

BANK_FORMAT = "cellbank3"


def weights_digest(path: Path) -> str:
    """A short digest of a weights file (its bytes)."""
    return file_digest(path, 12)


def load_pointnet(stem: str, device="cpu"):
    """The frozen PointNet++ of ``stem`` (``stem.safetensors`` + ``stem.json``) and a
    description of it."""
    from ..networks.checkpoint import load_checkpoint
    from ..networks.pointnet import PointNet2

    model, config = load_checkpoint(lambda cfg: PointNet2(**cfg["architecture"]), stem)
    model.eval().requires_grad_(False)
    info = {"weights": str(Path(f"{stem}.safetensors")),
            "digest": weights_digest(Path(f"{stem}.safetensors")),
            "metrics": config.get("metrics", {})}
    return model.to(device), info


def cache_dir(data, cache=None) -> Path:
    """Where frozen inputs are cached: ``cache``, or ``DATA/.spatialoc_cache``.

    When the dataset folder cannot be written (a read-only copy of the real
    dataset, say), the default moves to ``~/.cache/spatialoc_ros/<digest of
    the folder's absolute path>``.
    """
    if cache:
        path = Path(cache)
    else:
        path = Path(data) / ".spatialoc_cache"
        if not path.is_dir() and not os.access(Path(data), os.W_OK):
            digest = hashlib.sha256(str(Path(data).resolve()).encode()).hexdigest()[:16]
            path = Path.home() / ".cache" / "spatialoc_ros" / digest
    path.mkdir(parents=True, exist_ok=True)
    return path


def bank_key(split: str, pointnet_digest: str, max_objects: int, seed: int,
             cells: Sequence) -> str:
    """The name of a cell bank's cache file (without suffix): everything its contents depend on,
    the cells' content included (:func:`~spatialoc_ros.digest.cells_digest`)."""
    return f"{BANK_FORMAT}-{split}-{pointnet_digest}-{max_objects}-{seed}-{cells_digest(cells)}"


def bank_file(root, key: str) -> Path:
    """Where the cell bank of cache key ``key`` (:func:`bank_key`) is cached under ``root``."""
    return Path(root) / f"{key}.safetensors"


def load_bank(root: Path, split: str, cells: Sequence, pointnet, pointnet_info: dict,
              max_objects: int, seed: int, progress: bool = True) -> CellBank:
    """The cell bank of ``cells`` under a loaded PointNet++, from ``root`` when cached, else
    computed and saved.

    ``split`` names the file (a split, or "map"); the bank's ``key`` is its cache key
    (:func:`bank_key`), which the gallery's key builds on.
    """
    key = bank_key(split, pointnet_info["digest"], max_objects, seed, cells)
    path = bank_file(root, key)
    bank = CellBank.load(path)
    if bank is None or bank.ids != cell_ids(cells):
        log.info("computing the PointNet++ features of %d cells (nothing cached for these cells "
                 "and weights: %s)", len(cells), path.name)
        bank = build_cell_bank(cells, pointnet, max_objects, seed, progress=progress)
        bank.save(path)
    bank.key = key
    return bank


def load_banks(root: Path, pointnet_stem: str, cells_by_split: Dict[str, Sequence],
               max_objects: int, seed: int,
               progress: bool = True) -> Tuple[Dict[str, CellBank], dict]:
    """A cell bank per split (cached under ``root``) and a description of the PointNet++ used."""
    pointnet, info = load_pointnet(pointnet_stem)
    banks = {split: load_bank(root, split, cells, pointnet, info, max_objects, seed, progress)
             for split, cells in cells_by_split.items()}
    return banks, info


def load_text_cache(root: Path, encoder, sentences: Sequence[str]):
    """A token cache of the encoder (cached under ``root``) holding at least ``sentences``.

    ``encoder`` is a loaded encoder or the spec of one (a name or a folder).
    """
    from ..networks.text_encoder import FrozenTextEncoder
    from .text_cache import TextCache

    if isinstance(encoder, str):
        encoder = FrozenTextEncoder(encoder)
    folder = root / "text" / "".join(c if c.isalnum() else "_" for c in encoder.name)
    cache = TextCache(encoder, folder=folder)
    if cache.add(sentences):
        cache.save()
    return cache
