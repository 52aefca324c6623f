"""Two-stage retrieval for large galleries: an approximate shortlist, then the exact fused score.

Stage 1 searches a faiss index (inner product) over one compact vector per cell
for the ``shortlist`` best cells of each query. Stage 2 computes the exact fused
score of :mod:`.retrieval` (global + instance-level terms) on the shortlist
only, reading the instance features of just those rows (from memory or from a
memory-mapped :class:`~.cell_store.CellStore`).

The fused score z-normalises each term over the *whole* gallery per query, and
the shortlist is not the whole gallery. The statistics are therefore taken
from the gallery, not from the shortlist:

* global term s1 = <q, g>: exactly, from the gallery's mean m and population
  covariance S of P_glo, computed once: mean_j s1 = <q, m>, var_j s1 = q^T S q;
* set terms s2, s3 (a mean of maxima, no closed form): from a fixed random
  reference sample of ``reference`` cells (all cells when the gallery has no
  more), scored exactly per query. Its relative error on the standard
  deviation is about 1 / sqrt(2 · reference).

With ``reference`` at least the gallery size and ``shortlist`` at least the
gallery size, the scores equal :class:`~.retriever.ExhaustiveRetriever`'s.

Stage 1 indexes P_glo itself: its inner product with Q_glo is the global term,
exactly. The other terms rank the fused best cell nearly as well (on the
4,139-cell test gallery the global term alone puts the exhaustive fused best
among its first 64 cells for 99.5 % of the test queries, among its first 128
for all of them), while a bilinear stand-in for the set terms (the mean slot
vector) ranked it worse (83.7 % within 64) and would need every cell's instance
features read to build the index.
"""
from __future__ import annotations

import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from ..networks.outputs import CoarseOutputs
from .retrieval import SCORES, GalleryScorer

INDEX_KINDS = ("auto", "flat", "pca-sq8", "hnsw", "ivf")
# "auto": a flat scan up to here, "pca-sq8" above. Measured on the 2-core Xeon of the README
# with the 300 test queries of `bench --scale` against 100,000 cells: the true cell among the
# 256 shortlisted for 87.3 % of them with flat, 87.7 % with pca-sq8, and with ivf (1,265 lists)
# 65.0 % searching 32 lists and 85.7 % searching 256; retrieval recall@1/3/5 with pca-sq8 the
# exhaustive one within a query; end to end 71.2 ms against 82.3 ms flat (text encoder
# included, as it then ran on every query). A search at
# 1,000,000 cells: flat 102 ms, pca-sq8 28 ms. Text queries are not distributed like the
# cells, so inverted lists probed by the query's nearest centroids miss the right cell far
# more often than on cell-to-cell searches.
FLAT_MAX_CELLS = 50_000
PCA_DIM = 128  # pca-sq8: dimensions kept (at most half the descriptor's)
PCA_TRAIN_ROWS = 100_000  # rows the PCA and the quantiser ranges are fitted on
_MOMENT_BLOCK = 65_536  # rows per block of the global moments (float64 copies stay small)


def _set_scores(t: torch.Tensor, tmask: torch.Tensor, p: torch.Tensor,
                pmask: torch.Tensor) -> torch.Tensor:
    """Set similarity (lambda of Eq. (9)) of one query's hints t [Q, D] (valid tmask [Q]) with
    S cells' slots p [S, N, D] (valid pmask [S, N]) -> [S]; as :class:`.retrieval.GalleryScorer`.
    """
    s, n, d = p.shape
    t = t[tmask]                                                          # [Qv, D]
    sim = (p.reshape(s * n, d) @ t.t()).view(s, n, -1)                    # [S, N, Qv]
    sim = sim.masked_fill(~pmask.unsqueeze(-1), float("-inf"))
    return sim.amax(1).mean(1)


def _moments(x: torch.Tensor):
    """(mean [D], population covariance [D, D]) of the rows of x [C, D], in float64, a block of
    rows at a time (two passes: the mean first, then the centred products)."""
    count = x.shape[0]
    mean = sum(x[s:s + _MOMENT_BLOCK].double().sum(0)
               for s in range(0, count, _MOMENT_BLOCK)) / count
    cov = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
    for s in range(0, count, _MOMENT_BLOCK):
        c = x[s:s + _MOMENT_BLOCK].double() - mean
        cov += c.t() @ c
    return mean, cov / count


class TwoStageRetriever:
    """Approximate shortlist (faiss over P_glo) + exact fused rerank; see the module docstring.

    ``cells`` is a :class:`~.cell_rows.CellRows` (or a :class:`~.gallery.Gallery`, read
    in memory). ``index``: "flat" (exact inner product, a scan of C x 256 floats),
    "pca-sq8" (a scan of the descriptors projected on their first :data:`PCA_DIM` principal
    axes and quantised to 8 bits: a quarter of the flat scan's bytes and an eighth of its
    products, the shortlist reranked exactly as always), "hnsw" (graph, M = 32), "ivf"
    (inverted lists over about 4 sqrt(C) centroids, ``nprobe`` of them searched) or "auto"
    (flat up to :data:`FLAT_MAX_CELLS`, pca-sq8 above).
    ``reference``: the cells whose set scores give the z-statistics of the set terms.
    """

    def __init__(self, cells, score_terms: Sequence[str] = SCORES, shortlist: int = 256,
                 index: str = "auto", reference: int = 512, seed: int = 0, nprobe: int = 32):
        import faiss

        from .cell_rows import MemoryCells

        if index not in INDEX_KINDS:
            raise ValueError(f"index must be one of {INDEX_KINDS}, got {index!r}")
        if "global" not in score_terms:
            raise ValueError("the two-stage retriever shortlists by the global term; "
                             f"score terms {tuple(score_terms)} lack it")
        if not hasattr(cells, "instance"):  # a Gallery alone
            cells = MemoryCells(cells, None)
        count = len(cells)
        if index == "auto":
            index = "flat" if count <= FLAT_MAX_CELLS else "pca-sq8"
        self.cells, self.use = cells, tuple(score_terms)
        self.shortlist, self.kind = shortlist, index
        t0 = time.perf_counter()
        glo = cells.global_descriptors().float().contiguous()
        self.glo = glo                                                        # [C, D] in RAM
        self.glo_mean, self.glo_cov = _moments(glo)                           # [D], [D, D]
        # reference sample for the set terms (fixed; sorted for file-order reads)
        gen = np.random.default_rng(seed)
        ref = (np.arange(count) if count <= reference
               else np.sort(gen.choice(count, reference, replace=False)))
        self.reference_rows = torch.from_numpy(ref)
        self.sets = [s for s in ("object", "relation") if s in self.use]
        self.ref_scorer = None
        if self.sets:
            inst = cells.instance(self.reference_rows)
            self.ref_scorer = GalleryScorer(CoarseOutputs(p_obj=inst.p_obj, p_rel=inst.p_rel,
                                                          p_mask=inst.p_mask), self.sets)
        vectors, dim = glo.numpy(), glo.shape[1]
        if index == "flat":
            self.index = faiss.IndexFlatIP(dim)
        elif index == "pca-sq8":
            # approximate twice (PCA centres cells and query alike, which also shifts each
            # cell's product by -<mean, cell>; 8-bit codes): only the shortlist comes from it,
            # reranked exactly, and the measured share of true cells it keeps is above
            self.index = faiss.index_factory(dim, f"PCA{max(1, min(PCA_DIM, dim // 2))},SQ8",
                                             faiss.METRIC_INNER_PRODUCT)
            self.index.train(vectors if count <= PCA_TRAIN_ROWS else
                             vectors[np.sort(gen.choice(count, PCA_TRAIN_ROWS, replace=False))])
        elif index == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = 80
        else:
            lists = max(1, min(count // 39, int(4 * np.sqrt(count))))
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists,
                                            faiss.METRIC_INNER_PRODUCT)
            self.index.train(vectors[gen.choice(count, min(count, 64 * lists), replace=False)])
            self.index.nprobe = nprobe
        self.index.add(vectors)
        self.build_s = time.perf_counter() - t0

    def __len__(self) -> int:
        return len(self.cells)

    def term_stats(self, query: CoarseOutputs) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
        """Per term: (mean [B], population std [B]) of its raw score over the whole gallery
        (global: exact; set terms: over the reference cells)."""
        q = query.q_glo.double()
        var = ((q @ self.glo_cov) * q).sum(1).clamp(min=0.0)
        stats = {"global": ((q @ self.glo_mean).float(), var.sqrt().float())}
        if self.ref_scorer is not None:
            for name, raw in self.ref_scorer.terms(query).items():
                stats[name] = (raw.mean(1), raw.std(1, unbiased=False))
        return stats

    def shortlist_rows(self, query: CoarseOutputs, size: Optional[int] = None) -> torch.Tensor:
        """Stage 1: rows [B, S] of the S cells with the best global score (-1 past the end)."""
        s = min(size or self.shortlist, len(self))
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(s, 64)
        _, rows = self.index.search(query.q_glo.float().contiguous().numpy(), s)
        return torch.from_numpy(rows)

    def rerank(self, query: CoarseOutputs, rows: torch.Tensor,
               stats: Optional[dict] = None) -> torch.Tensor:
        """Stage 2: fused scores [B, S] of query b on its rows[b], z over the whole gallery."""
        stats = stats if stats is not None else self.term_stats(query)
        b, s = rows.shape
        valid = rows >= 0
        flat = rows.clamp(min=0).reshape(-1)

        def z(name, raw):
            mean, std = stats[name]
            return (raw - mean[:, None]) / torch.where(std > 0, std, torch.ones_like(std))[:, None]

        raw = (self.glo[flat].view(b, s, -1) * query.q_glo.unsqueeze(1)).sum(-1)   # [B, S]
        total = z("global", raw)
        if self.sets:
            inst = self.cells.instance(flat)
            for name, field, tfield in (("object", "p_obj", "t_obj"),
                                        ("relation", "p_rel", "t_rel")):
                if name not in self.sets:
                    continue
                p = getattr(inst, field).view(b, s, *getattr(inst, field).shape[1:])
                pmask = inst.p_mask.view(b, s, -1)
                t = getattr(query, tfield)
                raw = torch.stack([_set_scores(t[i], query.t_mask[i], p[i], pmask[i])
                                   for i in range(b)])
                total = total + z(name, raw)
        return total.masked_fill(~valid, float("-inf"))

    def top_k(self, query: CoarseOutputs, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        rows = self.shortlist_rows(query, max(self.shortlist, k))
        scores = self.rerank(query, rows)
        best, at = scores.topk(min(k, rows.shape[1]), dim=1)
        return best, rows.gather(1, at)
