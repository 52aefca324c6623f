"""The retriever seam: query descriptors in, the top-k gallery rows and their fused scores out.

Every retriever answers :meth:`Retriever.top_k` for a :class:`~.gallery.Gallery` and
the weights' score terms. Today's is :class:`ExhaustiveRetriever`, which scores every
cell with the fused score (:class:`~.retrieval.GalleryScorer`, the z-normalisation over
the whole gallery included); approximate indexes for very large galleries register
under their own name in :data:`RETRIEVERS` and are compared against it.
"""
from __future__ import annotations

from typing import Callable, Dict, Protocol, Sequence, Tuple

import torch

from ..networks.outputs import CoarseOutputs
from .retrieval import GalleryScorer


class Retriever(Protocol):
    def __len__(self) -> int:
        """Cells in the gallery."""

    def top_k(self, query: CoarseOutputs, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(scores [B, K], rows [B, K]) of the best min(k, cells) cells per query, best first."""


class ExhaustiveRetriever:
    """Fused scores of every gallery cell, then the top k: the reference for any approximate
    index."""

    def __init__(self, gallery, score_terms: Sequence[str]):
        self.scorer = GalleryScorer(gallery.descriptors, score_terms)

    def __len__(self) -> int:
        return self.scorer.cells

    def scores(self, query: CoarseOutputs) -> torch.Tensor:
        """Fused scores [B, C] of every cell (higher = better)."""
        return self.scorer(query)

    def top_k(self, query: CoarseOutputs, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        scores, rows = self.scorer(query).topk(min(k, len(self)), dim=1)
        return scores, rows


RETRIEVERS: Dict[str, Callable[..., Retriever]] = {"exhaustive": ExhaustiveRetriever}


def make_retriever(kind: str, gallery, score_terms: Sequence[str]) -> Retriever:
    """The retriever registered as ``kind`` over ``gallery``."""
    from ..errors import SpatialocError

    if kind not in RETRIEVERS:
        raise SpatialocError(f"unknown retriever {kind!r}; expected one of: "
                             f"{', '.join(sorted(RETRIEVERS))}")
    return RETRIEVERS[kind](gallery, score_terms)
