"""The encoded gallery of a map: coarse descriptors of every cell, cached on disk.

A map's cells are encoded once per pair (cell bank, coarse weights): the file
``gallery-<key>.safetensors`` beside the cell banks holds P_glo [C, D],
F_Object_P / F_Relation_P [C, N, D] and the object mask [C, N], plus the cell
ids it was built for. The key digests the coarse weights' bytes and the bank's
own key (PointNet++ weights, slots, sampling seed, the cells' content), so new
weights or a changed map never reuse stale descriptors. A damaged file is
encoded again (:mod:`.cache_files`). Scoring queries against a gallery is the
retriever's job (:mod:`.retriever`).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from ..networks.outputs import CoarseOutputs
from .cache_files import load_tensors, save_tensors
from ..digest import file_digest

log = logging.getLogger(__name__)

CELL_FIELDS = ("p_glo", "p_obj", "p_rel", "p_mask")


@dataclass
class Gallery:
    """Coarse descriptors of C cells (the cell fields of :class:`CoarseOutputs`) and their ids."""

    ids: List[str]
    descriptors: CoarseOutputs

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: Sequence[str]) -> torch.Tensor:
        index = {cid: i for i, cid in enumerate(self.ids)}
        return torch.tensor([index[c] for c in ids], dtype=torch.long)

    def save(self, path) -> None:
        tensors = {k: getattr(self.descriptors, k) for k in CELL_FIELDS
                   if getattr(self.descriptors, k) is not None}
        save_tensors(path, tensors, {"ids": self.ids})

    @classmethod
    def load(cls, path) -> Optional["Gallery"]:
        """The gallery saved at ``path``; None when there is none, or (with a warning) when it
        is damaged."""
        loaded = load_tensors(path, "gallery")
        if loaded is None:
            return None
        tensors, meta = loaded
        if "ids" not in meta:
            log.warning("%s: not a gallery (no cell ids); rebuilding it", path)
            return None
        return cls(list(meta["ids"]), CoarseOutputs(**{k: tensors.get(k) for k in CELL_FIELDS}))


# Bumped when the coarse model's code changes what it computes from the same weights
# (2: BatchNorm'd Linears lost their inert biases, which moved into the running means).
GALLERY_FORMAT = 2


def gallery_key(coarse_weights, bank_key: str) -> str:
    """A short digest of the coarse weights file's bytes, the cell bank's key and the format."""
    key = f"{GALLERY_FORMAT}|{bank_key}|{file_digest(coarse_weights, 64)}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def gallery_file(cache_root, key: str) -> Path:
    """Where the gallery of cache key ``key`` (:func:`gallery_key`) is cached under
    ``cache_root``."""
    return Path(cache_root) / f"gallery-{key}.safetensors"


def load_or_encode_gallery(model, bank, cache_root, coarse_weights, bank_key: str, device="cpu",
                           progress: bool = False) -> Gallery:
    """The gallery of ``bank`` under ``model``: from ``cache_root`` when cached, else encoded and
    saved.

    ``cache_root`` None skips the disk cache (encode only).
    """
    from .encoding import encode_gallery

    path = None
    if cache_root is not None:
        path = gallery_file(cache_root, gallery_key(coarse_weights, bank_key))
        cached = Gallery.load(path)
        if cached is not None and cached.ids == list(bank.ids):
            return cached
        log.info("encoding the gallery of %d cells (nothing cached for these cells and "
                 "weights: %s)", len(bank.ids), path.name)
    gallery = Gallery(list(bank.ids),
                      encode_gallery(model, bank, device=device, progress=progress))
    if path is not None:
        gallery.save(path)
    return gallery
