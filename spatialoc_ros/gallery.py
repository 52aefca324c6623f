"""The encoded gallery of a map: coarse descriptors of every cell, cached on disk, and a fast scorer.

A map's cells are encoded once per pair (cell bank, coarse weights): the file
``gallery-<key>.safetensors`` beside the cell banks holds P_glo [C, D],
F_Object_P / F_Relation_P [C, N, D] and the object mask [C, N], plus the cell
ids it was built for. The key digests the coarse weights' bytes and the bank's
own key (PointNet++ weights, slots, sampling seed, cell ids), so new weights or
a changed map never reuse stale descriptors. Scoring queries against a gallery
is :class:`~spatialoc_ros.evaluation.retrieval.GalleryScorer`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .networks.outputs import CoarseOutputs

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
        tensors = {k: getattr(self.descriptors, k).contiguous() for k in CELL_FIELDS
                   if getattr(self.descriptors, k) is not None}
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata={"ids": json.dumps(self.ids)})
        tmp.replace(path)

    @classmethod
    def load(cls, path) -> Optional["Gallery"]:
        """The gallery saved at ``path``, or None if the file is missing or unreadable."""
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                ids = json.loads(f.metadata()["ids"])
            tensors = load_file(str(path))
        except (OSError, SafetensorError, KeyError, ValueError, TypeError):
            return None
        return cls(ids, CoarseOutputs(**{k: tensors.get(k) for k in CELL_FIELDS}))


def gallery_key(coarse_weights, bank_key: str) -> str:
    """A short digest of the coarse weights file's bytes and the cell bank's key."""
    h = hashlib.sha256(bank_key.encode())
    with open(coarse_weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def load_or_encode_gallery(model, bank, cache_root, coarse_weights, bank_key: str, device="cpu",
                           progress: bool = False) -> Gallery:
    """The gallery of ``bank`` under ``model``: from ``cache_root`` when cached, else encoded and saved.

    ``cache_root`` None skips the disk cache (encode only).
    """
    from .evaluation.coarse_eval import encode_gallery

    path = None
    if cache_root is not None:
        path = Path(cache_root) / f"gallery-{gallery_key(coarse_weights, bank_key)}.safetensors"
        cached = Gallery.load(path) if path.exists() else None
        if cached is not None and cached.ids == list(bank.ids):
            return cached
    gallery = Gallery(list(bank.ids), encode_gallery(model, bank, device=device, progress=progress))
    if path is not None:
        gallery.save(path)
    return gallery
