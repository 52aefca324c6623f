"""The retriever seam: query descriptors in, the top-k gallery rows and their fused scores out.

Every retriever answers :meth:`Retriever.top_k` for a :class:`~.gallery.Gallery` (or
any :class:`~.cell_rows.CellRows`) and the weights' score terms.
:class:`ExhaustiveRetriever` scores every cell with the fused score
(:class:`~.retrieval.GalleryScorer`, the z-normalisation over the whole gallery
included): the reference. ``"two-stage"`` (:class:`~.ann_retriever.TwoStageRetriever`)
shortlists with a faiss index and reranks the shortlist exactly, for galleries of
hundreds of thousands of cells; its figures are compared against the exhaustive ones.
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


def _all_descriptors(cells) -> CoarseOutputs:
    """Every cell's descriptors from a Gallery, a MemoryCells or any other CellRows source."""
    if hasattr(cells, "gallery"):  # MemoryCells
        cells = cells.gallery
    if hasattr(cells, "descriptors"):  # Gallery
        return cells.descriptors
    out = cells.instance(torch.arange(len(cells)))
    out.p_glo = cells.global_descriptors()
    return out


class ExhaustiveRetriever:
    """Fused scores of every gallery cell, then the top k: the reference for any approximate
    index."""

    def __init__(self, gallery, score_terms: Sequence[str]):
        self.scorer = GalleryScorer(_all_descriptors(gallery), score_terms)

    def __len__(self) -> int:
        return self.scorer.cells

    def scores(self, query: CoarseOutputs) -> torch.Tensor:
        """Fused scores [B, C] of every cell (higher = better)."""
        return self.scorer(query)

    def top_k(self, query: CoarseOutputs, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        scores, rows = self.scorer(query).topk(min(k, len(self)), dim=1)
        return scores, rows


def _two_stage(gallery, score_terms: Sequence[str], **options) -> Retriever:
    from .ann_retriever import TwoStageRetriever

    return TwoStageRetriever(gallery, score_terms, **options)


# Up to here scoring every cell is as fast as the two-stage retriever's statistics on its
# 1,024 reference cells plus the rerank (1,069 cells: 14 ms exhaustive; 4,139 cells: 27 ms
# exhaustive against 15 ms two-stage, text descriptors included), and it is exact.
AUTO_EXHAUSTIVE_CELLS = 2048


def _auto(gallery, score_terms: Sequence[str], **options) -> Retriever:
    """Exhaustive up to :data:`AUTO_EXHAUSTIVE_CELLS` cells, two-stage above."""
    if len(gallery) <= AUTO_EXHAUSTIVE_CELLS:
        return ExhaustiveRetriever(gallery, score_terms)
    return _two_stage(gallery, score_terms, **options)


RETRIEVERS: Dict[str, Callable[..., Retriever]] = {
    "auto": _auto,
    "exhaustive": ExhaustiveRetriever,
    "two-stage": _two_stage,
}


def make_retriever(kind: str, gallery, score_terms: Sequence[str], **options) -> Retriever:
    """The retriever registered as ``kind`` over ``gallery`` (``options``: its own settings,
    e.g. ``shortlist`` for "two-stage")."""
    from ..errors import SpatialocError

    if kind not in RETRIEVERS:
        raise SpatialocError(f"unknown retriever {kind!r}; expected one of: "
                             f"{', '.join(sorted(RETRIEVERS))}")
    return RETRIEVERS[kind](gallery, score_terms, **options)
