"""The frozen inputs of training and evaluation, computed once and cached on disk.

* token embeddings of every hint sentence (:class:`.text_cache.TextCache`),
* per split, a :class:`.cell_bank.CellBank` of PointNet++ features per cell,
  keyed by the PointNet++ weights, so new weights never reuse stale features.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path
from typing import Dict, Sequence, Tuple

from .cell_bank import CellBank, build_cell_bank


def weights_digest(path: Path) -> str:
    """A short digest of a weights file (its bytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def load_pointnet(stem: str, device="cpu"):
    """The frozen PointNet++ of ``stem`` (``stem.safetensors`` + ``stem.json``) and a description of it."""
    from ..networks.checkpoint import load_checkpoint
    from ..networks.pointnet import PointNet2

    model, config = load_checkpoint(lambda cfg: PointNet2(**cfg["architecture"]), stem)
    model.eval().requires_grad_(False)
    info = {"weights": str(Path(f"{stem}.safetensors")), "digest": weights_digest(Path(f"{stem}.safetensors")),
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


def bank_key(split: str, pointnet_digest: str, max_objects: int, seed: int, cells: Sequence) -> str:
    """The name of a cell bank's cache file (without suffix): everything its contents depend on."""
    ids = zlib.crc32("\n".join(c.id for c in cells).encode())
    return f"cellbank2-{split}-{pointnet_digest}-{max_objects}-{seed}-{ids:08x}"


def load_banks(root: Path, pointnet_stem: str, cells_by_split: Dict[str, Sequence], max_objects: int,
               seed: int, progress: bool = True) -> Tuple[Dict[str, CellBank], dict]:
    """A cell bank per split (cached under ``root``) and a description of the PointNet++ used."""
    pointnet, info = load_pointnet(pointnet_stem)
    banks = {}
    for split, cells in cells_by_split.items():
        path = root / f"{bank_key(split, info['digest'], max_objects, seed, cells)}.safetensors"
        bank = CellBank.load(path) if path.exists() else None
        if bank is None or bank.ids != [c.id for c in cells]:
            bank = build_cell_bank(cells, pointnet, max_objects, seed, progress=progress)
            bank.save(path)
        banks[split] = bank
    return banks, info


def load_text_cache(root: Path, encoder_spec: str, sentences: Sequence[str]):
    """A token cache of the encoder (cached under ``root``) holding at least ``sentences``."""
    from ..networks.text_encoder import FrozenTextEncoder
    from .text_cache import TextCache

    encoder = FrozenTextEncoder(encoder_spec)
    folder = root / "text" / "".join(c if c.isalnum() else "_" for c in encoder.name)
    cache = TextCache(encoder, folder=folder)
    if cache.add(sentences):
        cache.save()
    return cache
