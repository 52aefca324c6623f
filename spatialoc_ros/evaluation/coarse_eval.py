"""Encode a gallery and queries with a coarse model, rank the cells, measure recall."""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from ..networks.outputs import CoarseOutputs
from ..training.text_batches import text_batch
from .retrieval import GalleryScorer, retrieval_recall, top_k

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


@torch.inference_mode()
def encode_gallery(model, bank, batch_size: int = 128, device="cpu", progress=False) -> CoarseOutputs:
    """Cell descriptors of every cell of ``bank`` (a CellBank), on the CPU."""
    from tqdm import tqdm

    model.eval()
    chunks = []
    for start in tqdm(range(0, len(bank), batch_size), desc="gallery", disable=not progress):
        rows = torch.arange(start, min(start + batch_size, len(bank)))
        inputs = {k: v.to(device) for k, v in bank.batch(rows).items()}
        out = model.encode_cells(**inputs)
        chunks.append(CoarseOutputs(**{k: None if getattr(out, k) is None else getattr(out, k).cpu()
                                       for k in _CELL_FIELDS}))
    return _collect(chunks, _CELL_FIELDS)


@torch.inference_mode()
def encode_queries(model, cache, hints: Sequence[Sequence[str]], batch_size: int = 256,
                   device="cpu", progress=False) -> CoarseOutputs:
    """Text descriptors of queries given as lists of hint sentences, on the CPU."""
    from tqdm import tqdm

    model.eval()
    chunks = []
    for start in tqdm(range(0, len(hints), batch_size), desc="queries", disable=not progress):
        batch = {k: v.to(device) for k, v in text_batch(cache, hints[start:start + batch_size]).items()}
        out = model.encode_text(**batch)
        chunks.append(CoarseOutputs(**{k: None if getattr(out, k) is None else getattr(out, k).cpu()
                                       for k in _TEXT_FIELDS}))
    return _collect(chunks, _TEXT_FIELDS)


def rank_cells(queries: CoarseOutputs, gallery: CoarseOutputs, scores: Sequence[str], k: int = 10) -> torch.Tensor:
    """Gallery rows [B, k] of the best cells per query, best first (fused scores, spec §7.6)."""
    return top_k(GalleryScorer(gallery, scores)(queries), k)


def retrieval_metrics(topk_rows: torch.Tensor, gt_rows: torch.Tensor, ks=(1, 3, 5)) -> Dict[str, float]:
    """{"1": r, "3": r, "5": r}: the share of queries whose ground-truth cell is in the top k."""
    return {str(k): v for k, v in retrieval_recall(topk_rows, gt_rows, ks).items()}
