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

from typing import Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import torch

from ..networks.outputs import CoarseOutputs
from .retrieval import GalleryScorer, zscore


class Retriever(Protocol):
    def __len__(self) -> int:
        """Cells in the gallery."""

    def top_k(self, query: CoarseOutputs, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(scores [B, K], rows [B, K]) of the best min(k, cells) cells per query, best first."""


STREAM_CHUNK = 8192  # cells per block when the exhaustive reference reads rows from a store


def _in_memory(cells) -> bool:
    """A Gallery, or a MemoryCells over one: descriptors already in RAM as float32."""
    return hasattr(cells, "gallery") or hasattr(cells, "descriptors")


def _all_descriptors(cells) -> CoarseOutputs:
    """Every cell's descriptors from a Gallery or a MemoryCells (see :func:`_in_memory`)."""
    if hasattr(cells, "gallery"):  # MemoryCells
        cells = cells.gallery
    return cells.descriptors


class ExhaustiveRetriever:
    """Fused scores of every gallery cell, then the top k: the reference for any approximate
    index.

    A gallery in memory (a Gallery or MemoryCells) is scored as one matrix. Rows read from a
    store (any other CellRows, e.g. a gallery grown with memory-mapped distractor cells) are
    scored in blocks of ``chunk`` cells: each block's raw term scores are kept ([B, C] per
    term, 400 bytes per cell for 100 queries), then z-normalised over all C cells and fused,
    so only one block's instance features are in memory at a time. Both give the scores of
    :func:`.retrieval.fused_scores` over the whole gallery.
    """

    def __init__(self, gallery, score_terms: Sequence[str], chunk: Optional[int] = None):
        self.use = tuple(score_terms)
        self.scorer, self.source = None, None
        if chunk is None and _in_memory(gallery):
            self.scorer = GalleryScorer(_all_descriptors(gallery), score_terms)
            self.cells = self.scorer.cells
        else:
            if not hasattr(gallery, "instance"):  # a Gallery alone
                from .cell_rows import MemoryCells

                gallery = MemoryCells(gallery, None)
            self.source, self.chunk = gallery, int(chunk or STREAM_CHUNK)
            self.glo = gallery.global_descriptors() if "global" in self.use else None
            self.cells = len(gallery)

    def __len__(self) -> int:
        return self.cells

    def scores(self, query: CoarseOutputs) -> torch.Tensor:
        """Fused scores [B, C] of every cell (higher = better)."""
        if self.scorer is not None:
            return self.scorer(query)
        return sum(zscore(raw) for raw in self.terms(query).values())

    def terms(self, query: CoarseOutputs) -> Dict[str, torch.Tensor]:
        """Raw scores [B, C] of each term over the whole gallery, block by block."""
        if self.scorer is not None:
            return self.scorer.terms(query)
        parts: Dict[str, List[torch.Tensor]] = {}
        sets = [t for t in self.use if t != "global"]
        for start in range(0, self.cells, self.chunk):
            rows = torch.arange(start, min(start + self.chunk, self.cells))
            block = self.source.instance(rows) if sets else CoarseOutputs()
            if self.glo is not None:
                block.p_glo = self.glo[rows]
            scorer = GalleryScorer(block, self.use)
            pieces: Dict[str, List[torch.Tensor]] = {}
            for sl in scorer.query_slices(query):
                for name, raw in scorer.terms(query, sl).items():
                    pieces.setdefault(name, []).append(raw)
            for name, raw in pieces.items():
                parts.setdefault(name, []).append(torch.cat(raw))
        return {name: torch.cat(raw, dim=1) for name, raw in parts.items()}

    def top_k(self, query: CoarseOutputs, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        scores, rows = self.scores(query).topk(min(k, len(self)), dim=1)
        return scores, rows


def _two_stage(gallery, score_terms: Sequence[str], **options) -> Retriever:
    from .ann_retriever import TwoStageRetriever

    return TwoStageRetriever(gallery, score_terms, **options)


# Up to here scoring every cell is as fast as the two-stage retriever's statistics on its
# 512 reference cells plus the rerank (1,069 cells: 14 ms exhaustive; 4,139 cells: 27 ms
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
