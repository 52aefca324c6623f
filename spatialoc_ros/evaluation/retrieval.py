"""Coarse retrieval: score every gallery cell per query, rank, measure recall (spec §7.6).

The score is the code's fusion (spec §7.6, bug #6): for query i and cell j

    s1 = <Q_glo_i, P_glo_j>                       global descriptors
    s2 = lambda(F_Object_T_i, F_Object_P_j)       set similarity (§7.1)
    s3 = lambda(F_Relation_T_i, F_Relation_P_j)
    score = z(s1) + z(s2) + z(s3)

where z standardises a score over the whole gallery for each query
(population std; a constant row standardises to 0). ``use`` selects the
scores to fuse: the "SpatiaLoc (Global)" variant uses s1 alone, whose z-score
ranks exactly as s1 does. Because z depends on the whole gallery, pass all
cells at once (the set similarity is chunked internally).
"""
from typing import Dict, Sequence

import torch

from ..networks.outputs import CoarseOutputs
from ..training.losses import set_similarity

__all__ = ["SCORES", "fused_scores", "retrieval_recall", "top_k", "zscore"]

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
    as ``use`` requires.
    """
    unknown = set(use) - set(SCORES)
    if unknown or not use:
        raise ValueError(f"use must be a non-empty subset of {SCORES}, got {tuple(use)}")
    total = 0
    if "global" in use:
        query.require("q_glo")
        gallery.require("p_glo")
        total = total + zscore(query.q_glo @ gallery.p_glo.t())
    for name, t_field, p_field in (("object", "t_obj", "p_obj"),
                                   ("relation", "t_rel", "p_rel")):
        if name in use:
            query.require(t_field, "t_mask")
            gallery.require(p_field, "p_mask")
            s = set_similarity(getattr(query, t_field), query.t_mask,
                               getattr(gallery, p_field), gallery.p_mask)
            total = total + zscore(s)
    return total


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
