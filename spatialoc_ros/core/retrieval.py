"""Coarse retrieval: score every gallery cell per query, rank, measure recall.

This is the coarse stage of SpatiaLoc (arXiv 2601.03579), §3.1, Eq. (2). The
paper ranks by the distance of the global descriptors alone; the reference code
ranks by a fusion of three scores, and so do we: for query i and cell j

    s1 = <Q_glo_i, P_glo_j>                       global descriptors
    s2 = lambda(F_Object_T_i, F_Object_P_j)       set similarity (lambda of Eq. (9))
    s3 = lambda(F_Relation_T_i, F_Relation_P_j)
    score = z(s1) + z(s2) + z(s3)

where z standardises a score over the whole gallery for each query
(population std; a constant row standardises to 0). ``use`` selects the
scores to fuse: the "SpatiaLoc (Global)" variant uses s1 alone, whose z-score
ranks exactly as s1 does. Because z depends on the whole gallery, pass all
cells at once.

:class:`GalleryScorer` holds a gallery in the layout that scoring wants: the
transposed global descriptors, and the object / relation features flattened to
one [D, C·N] matrix with padded slots at zero plus an additive mask (0 valid,
-inf padding). A query's set similarity is then one matrix product
[Q, D] × [D, C·N], a max over each cell's slots and a mean over the valid
hints: the same numbers as the training losses' ``set_similarity``.
"""
from typing import Dict, Sequence

import torch

from ..networks.outputs import CoarseOutputs

_ENTRIES_PER_CHUNK = 1 << 24  # similarity entries per block of queries (64 MiB in float32)

__all__ = ["SCORES", "GalleryScorer", "fused_scores", "rank_cells", "retrieval_metrics",
           "retrieval_recall", "top_k", "zscore"]

SCORES = ("global", "object", "relation")


def zscore(s: torch.Tensor) -> torch.Tensor:
    """Standardise s [B, C] along C: (s - mean) / std, population std; rows with std 0 -> 0."""
    mean = s.mean(dim=1, keepdim=True)
    std = s.std(dim=1, keepdim=True, unbiased=False)
    return (s - mean) / torch.where(std > 0, std, torch.ones_like(std))


def fused_scores(query: CoarseOutputs, gallery: CoarseOutputs,
                 use: Sequence[str] = SCORES) -> torch.Tensor:
    """Fused retrieval scores [B, C] of B queries against C gallery cells (higher = better).

    query needs q_glo [B, D] and/or t_obj, t_rel [B, Q, D] with t_mask [B, Q];
    gallery needs p_glo [C, D] and/or p_obj, p_rel [C, N, D] with p_mask [C, N],
    as ``use`` requires. To score many queries against one gallery, build a
    :class:`GalleryScorer` once.
    """
    return GalleryScorer(gallery, use)(query)


class GalleryScorer:
    """Fused retrieval scores of queries against one gallery, with the gallery side precomputed."""

    def __init__(self, gallery: CoarseOutputs, use: Sequence[str] = SCORES):
        unknown = set(use) - set(SCORES)
        if unknown or not use:
            raise ValueError(f"use must be a non-empty subset of {SCORES}, got {tuple(use)}")
        self.use = tuple(use)
        self.glo_t = None
        self.sets = {}
        if "global" in use:
            gallery.require("p_glo")
            self.glo_t = gallery.p_glo.t().contiguous()                           # [D, C]
        for name, field in (("object", "p_obj"), ("relation", "p_rel")):
            if name in use:
                gallery.require(field, "p_mask")
                p, mask = getattr(gallery, field), gallery.p_mask
                if not bool(mask.any(1).all()):
                    raise ValueError("every gallery cell needs a valid object")
                flat = (p.masked_fill(~mask.unsqueeze(-1), 0.0).reshape(-1, p.shape[-1])
                        .t().contiguous())
                neg = torch.zeros(mask.shape, dtype=p.dtype).masked_fill(~mask, float("-inf"))
                self.sets[name] = (flat, neg)                                    # [D, C*N], [C, N]
        self.cells = (gallery.p_glo if gallery.p_glo is not None else gallery.p_mask).shape[0]

    def __call__(self, query: CoarseOutputs) -> torch.Tensor:
        """Fused scores [B, C] (higher = better), equal to ``fused_scores(query, gallery,
        use)``."""
        return torch.cat([self._score(query, sl) for sl in self.query_slices(query)])

    def query_slices(self, query: CoarseOutputs):
        """Slices of the queries small enough that one slice's similarities [b, Q, C, N] stay
        within ``_ENTRIES_PER_CHUNK`` entries."""
        b = (query.q_glo if query.q_glo is not None else query.t_mask).shape[0]
        slots = max((neg.shape[1] for _, neg in self.sets.values()), default=1)
        hints = query.t_mask.shape[1] if query.t_mask is not None else 1
        per = max(1, _ENTRIES_PER_CHUNK // max(1, self.cells * slots * hints))
        return [slice(s, s + per) for s in range(0, b, per)]

    def _score(self, query: CoarseOutputs, sl: slice) -> torch.Tensor:
        total = 0
        for raw in self.terms(query, sl).values():
            total = total + zscore(raw)
        return total

    def terms(self, query: CoarseOutputs, sl: slice = slice(None)) -> Dict[str, torch.Tensor]:
        """The raw scores [b, C] of each used term (s1, s2, s3 of the module docstring), before
        the z-normalisation, for the queries ``sl``."""
        out = {}
        if self.glo_t is not None:
            query.require("q_glo")
            out["global"] = query.q_glo[sl] @ self.glo_t
        for name, field in (("object", "t_obj"), ("relation", "t_rel")):
            if name not in self.sets:
                continue
            query.require(field, "t_mask")
            t, tmask = getattr(query, field)[sl], query.t_mask[sl]
            if not bool(tmask.any(1).all()):
                raise ValueError("every query needs a valid hint")
            flat, neg = self.sets[name]
            b, q, _ = t.shape
            sim = (t.reshape(b * q, -1) @ flat).view(b, q, *neg.shape) + neg     # [b, Q, C, N]
            best = sim.amax(-1).masked_fill(~tmask.unsqueeze(-1), 0.0)           # [b, Q, C]
            out[name] = best.sum(1) / tmask.sum(1, keepdim=True)
        return out


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Gallery indices [B, min(k, C)] of the best cells per query, best first."""
    return scores.topk(min(k, scores.shape[1]), dim=1).indices


def retrieval_recall(topk_ids: torch.Tensor, gt_ids: torch.Tensor,
                     ks: Sequence[int] = (1, 3, 5)) -> Dict[int, float]:
    """Fraction of queries whose ground-truth cell is among their first k retrieved, per k.

    topk_ids [B, K] retrieved gallery ids, best first; gt_ids [B] (one correct
    cell per query) or [B, G] (any of G correct cells, padded with -1).
    A k above K counts all K retrieved cells.
    """
    gt = gt_ids.unsqueeze(1) if gt_ids.dim() == 1 else gt_ids            # [B, G]
    hit = (topk_ids.unsqueeze(-1) == gt.unsqueeze(1)).any(-1)          # [B, K]; ids are >= 0
    return {k: hit[:, :k].any(1).float().mean().item() for k in ks}


def rank_cells(queries: CoarseOutputs, gallery: CoarseOutputs, scores: Sequence[str],
               k: int = 10) -> torch.Tensor:
    """Gallery rows [B, k] of the best cells per query, best first (fused scores, see the module
    docstring)."""
    return top_k(GalleryScorer(gallery, scores)(queries), k)


def retrieval_metrics(topk_rows: torch.Tensor, gt_rows: torch.Tensor,
                      ks=(1, 3, 5)) -> Dict[str, float]:
    """{"1": r, "3": r, "5": r}: the share of queries whose ground-truth cell is in the top k."""
    return {str(k): v for k, v in retrieval_recall(topk_rows, gt_rows, ks).items()}
