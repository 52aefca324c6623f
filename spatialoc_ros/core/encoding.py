"""Batched encoding with the frozen-input caches: gallery cells and queries (coarse stage), fine
predictions."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch

from ..networks.outputs import CoarseOutputs
from .text_cache import text_batch

_CELL_FIELDS = ("p_glo", "p_obj", "p_rel", "p_mask")
_TEXT_FIELDS = ("q_glo", "t_obj", "t_rel", "t_mask")


def _pad_cat(parts: List[torch.Tensor]) -> torch.Tensor:
    """Concatenate [b, n_i, ...] tensors along dim 0, zero-padding dim 1 to the largest n_i."""
    if parts[0].dim() < 2:
        return torch.cat(parts)
    n = max(p.shape[1] for p in parts)
    padded = []
    for p in parts:
        if p.shape[1] < n:
            shape = list(p.shape)
            shape[1] = n - p.shape[1]
            p = torch.cat([p, p.new_zeros(shape)], dim=1)
        padded.append(p)
    return torch.cat(padded)


def _collect(chunks: List[CoarseOutputs], names) -> CoarseOutputs:
    out = CoarseOutputs()
    for name in names:
        parts = [getattr(c, name) for c in chunks]
        if parts[0] is not None:
            setattr(out, name, _pad_cat(parts))
    return out


def _encode_in_chunks(encode, count: int, batch_size: int, fields, desc: str,
                      progress: bool) -> CoarseOutputs:
    """``encode(start, stop)`` over ``count`` items in chunks; ``fields`` gathered on the CPU."""
    from tqdm import tqdm

    chunks = []
    for start in tqdm(range(0, count, batch_size), desc=desc, disable=not progress):
        out = encode(start, min(start + batch_size, count))
        chunks.append(CoarseOutputs(**{k: None if getattr(out, k) is None
                                       else getattr(out, k).cpu() for k in fields}))
    return _collect(chunks, fields)


@torch.inference_mode()
def encode_gallery(model, bank, batch_size: int = 128, device="cpu",
                   progress=False) -> CoarseOutputs:
    """Cell descriptors of every cell of ``bank`` (a CellBank), on the CPU."""
    model.eval()

    def encode(start, stop):
        inputs = {k: v.to(device) for k, v in bank.batch(torch.arange(start, stop)).items()}
        return model.encode_cells(**inputs)

    return _encode_in_chunks(encode, len(bank), batch_size, _CELL_FIELDS, "gallery", progress)


@torch.inference_mode()
def encode_queries(model, cache, hints: Sequence[Sequence[str]], batch_size: int = 256,
                   device="cpu", progress=False) -> CoarseOutputs:
    """Text descriptors of queries given as lists of hint sentences, on the CPU."""
    model.eval()

    def encode(start, stop):
        batch = {k: v.to(device) for k, v in text_batch(cache, hints[start:stop]).items()}
        return model.encode_text(**batch)

    return _encode_in_chunks(encode, len(hints), batch_size, _TEXT_FIELDS, "queries", progress)


@torch.inference_mode()
def predict_fine(model, cache, bank, hints: Sequence[Sequence[str]], rows: np.ndarray,
                 device, batch_size: int = 256):
    """Fine-stage offsets [M, 2] and precisions [M] (or None) of queries ``hints`` in bank rows
    ``rows``."""
    model.eval()
    offsets, precisions = [], []
    for start in range(0, len(rows), batch_size):
        sl = slice(start, start + batch_size)
        text = {k: v.to(device) for k, v in text_batch(cache, hints[sl]).items()}
        cells = {k: v.to(device) for k, v in bank.batch(torch.from_numpy(rows[sl])).items()}
        out = model(text, cells)
        offsets.append(out.offset.float().cpu())
        if out.precision is not None:
            precisions.append(out.precision.float().cpu())
    offsets = torch.cat(offsets).numpy() if offsets else np.zeros((0, 2), np.float32)
    return offsets, (torch.cat(precisions).numpy() if precisions else None)
