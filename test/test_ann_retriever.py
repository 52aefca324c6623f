"""The two-stage retriever against exhaustive fused scoring, on small galleries."""
import numpy as np
import pytest
import torch

from spatialoc_ros.core.ann_retriever import TwoStageRetriever
from spatialoc_ros.core.cell_rows import MemoryCells
from spatialoc_ros.core.cell_store import CellStore
from spatialoc_ros.core.retriever import ExhaustiveRetriever, make_retriever
from spatialoc_ros.networks.outputs import CoarseOutputs

from test_cell_store import DIM, make_cells, write_store

TERMS = ("global", "object", "relation")


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def make_queries(count, hints=3, seed=7):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(count, hints, dtype=torch.bool)
    mask[0, -1] = False  # one query with a padded hint
    return CoarseOutputs(q_glo=_unit(torch.randn(count, DIM, generator=g)),
                         t_obj=_unit(torch.randn(count, hints, DIM, generator=g)),
                         t_rel=_unit(torch.randn(count, hints, DIM, generator=g)), t_mask=mask)


@pytest.fixture(scope="module")
def cells():
    return make_cells(300, seed=3)


def one(query, i):
    return CoarseOutputs(**{k: None if v is None else v[i:i + 1] for k, v in vars(query).items()})


@pytest.mark.parametrize("index", ["flat", "pca-sq8", "hnsw", "ivf"])
def test_whole_gallery_shortlist_and_reference_give_the_exhaustive_scores(cells, index):
    gallery, bank = cells
    query = make_queries(6)
    ref_scores, ref_rows = ExhaustiveRetriever(gallery, TERMS).top_k(query, 10)
    two = TwoStageRetriever(MemoryCells(gallery, bank), TERMS, shortlist=len(gallery),
                            index=index, reference=len(gallery), nprobe=10_000)
    scores, rows = two.top_k(query, 10)
    # the same sums of z-scores in another order of summation: float32 rounding only
    torch.testing.assert_close(scores, ref_scores, rtol=1e-4, atol=1e-4)
    close = (ref_scores[:, :-1] - ref_scores[:, 1:]).abs() < 1e-3  # ties may swap
    assert ((rows == ref_rows) | torch.cat([close, close[:, -1:]], 1)).all()


def test_a_short_list_reranks_exactly(cells):
    """With whole-gallery statistics, every returned cell carries its exhaustive score, and the
    cells are the best of the global term's shortlist."""
    gallery, bank = cells
    query = make_queries(5)
    exhaustive = ExhaustiveRetriever(gallery, TERMS).scores(query)           # [B, C]
    two = TwoStageRetriever(MemoryCells(gallery, bank), TERMS, shortlist=40,
                            reference=len(gallery))
    scores, rows = two.top_k(query, 10)
    torch.testing.assert_close(scores, exhaustive.gather(1, rows), rtol=1e-4, atol=1e-4)
    shortlist = (query.q_glo @ gallery.descriptors.p_glo.t()).topk(40, dim=1).indices
    for b in range(5):
        assert set(rows[b].tolist()) <= set(shortlist[b].tolist())
        best_in_shortlist = exhaustive[b, shortlist[b]].max()
        torch.testing.assert_close(scores[b, 0], best_in_shortlist, rtol=1e-4, atol=1e-4)


def test_global_statistics_are_exact_and_set_statistics_are_sampled(cells):
    gallery, bank = cells
    query = make_queries(4)
    two = TwoStageRetriever(MemoryCells(gallery, bank), TERMS, reference=100, seed=1)
    stats = two.term_stats(query)
    raw = query.q_glo.double() @ gallery.descriptors.p_glo.double().t()
    torch.testing.assert_close(stats["global"][0].double(), raw.mean(1), rtol=0, atol=1e-5)
    torch.testing.assert_close(stats["global"][1].double(), raw.std(1, unbiased=False),
                               rtol=1e-4, atol=1e-5)
    assert len(two.reference_rows) == 100 and len(set(two.reference_rows.tolist())) == 100
    # the sampled statistics are those of the reference cells exactly
    sub = ExhaustiveRetriever(gallery, ("object",)).scorer.terms(query)["object"]
    sample = sub[:, two.reference_rows]
    torch.testing.assert_close(stats["object"][0], sample.mean(1), rtol=1e-5, atol=1e-6)


def test_rows_from_a_memory_mapped_store_score_like_memory(cells, tmp_path):
    gallery, bank = cells
    write_store(tmp_path / "s", gallery, bank)
    query = make_queries(4)
    in_memory = TwoStageRetriever(MemoryCells(gallery, bank), TERMS, shortlist=64,
                                  reference=len(gallery))
    on_disk = TwoStageRetriever(CellStore(tmp_path / "s"), TERMS, shortlist=64,
                                reference=len(gallery))
    a, ra = in_memory.top_k(query, 5)
    b, rb = on_disk.top_k(query, 5)
    # float16 instance features: set similarities move by at most ~1e-3 of a unit cosine;
    # divided by a z-score's std of ~0.1 here, fused scores by well under 0.1
    torch.testing.assert_close(a, b, rtol=0, atol=0.1)
    assert (ra[:, 0] == rb[:, 0]).float().mean() >= 0.75


def test_the_registry_builds_it_and_it_needs_the_global_term(cells):
    gallery, bank = cells
    retriever = make_retriever("two-stage", MemoryCells(gallery, bank), TERMS, shortlist=16)
    assert isinstance(retriever, TwoStageRetriever) and len(retriever) == 300
    with pytest.raises(ValueError, match="global"):
        TwoStageRetriever(MemoryCells(gallery, bank), ("object",))


def test_one_query_at_a_time_equals_a_batch(cells):
    gallery, bank = cells
    query = make_queries(3)
    two = TwoStageRetriever(MemoryCells(gallery, bank), TERMS, shortlist=50, reference=80)
    batch_scores, batch_rows = two.top_k(query, 5)
    for i in range(3):
        s, r = two.top_k(one(query, i), 5)
        torch.testing.assert_close(s[0], batch_scores[i], rtol=1e-5, atol=1e-5)
        assert np.array_equal(r[0].numpy(), batch_rows[i].numpy())


def test_exhaustive_scoring_in_blocks_equals_scoring_the_whole_gallery(cells, tmp_path):
    """Rows read block by block (a store, or memory with a chunk) give the scores of one matrix:
    each raw term is the same dot products, z-normalised over all cells at the end."""
    gallery, bank = cells
    query = make_queries(5)
    whole = ExhaustiveRetriever(gallery, TERMS)
    blocks = ExhaustiveRetriever(MemoryCells(gallery, bank), TERMS, chunk=37)  # 300 = 8·37 + 4
    assert whole.scorer is not None and blocks.scorer is None and len(blocks) == len(gallery)
    # blocked products sum in another order: float32 rounding only
    torch.testing.assert_close(blocks.scores(query), whole.scores(query), rtol=1e-4, atol=1e-4)
    for name, raw in whole.terms(query).items():
        torch.testing.assert_close(blocks.terms(query)[name], raw, rtol=1e-5, atol=1e-5)
    write_store(tmp_path / "s", gallery, bank)
    on_disk = ExhaustiveRetriever(CellStore(tmp_path / "s"), TERMS)
    assert on_disk.scorer is None  # a store is read in blocks, never whole
    # float16 instance features (see the test above): fused scores within 0.1
    torch.testing.assert_close(on_disk.scores(query), whole.scores(query), rtol=0, atol=0.1)
    # the global term alone ranks as its z-score does (random unit vectors: no near-ties)
    global_only = ExhaustiveRetriever(MemoryCells(gallery, bank), ("global",), chunk=64)
    direct = (query.q_glo @ gallery.descriptors.p_glo.t()).topk(3, dim=1).indices
    assert global_only.top_k(query, 3)[1].equal(direct)


def test_auto_index_and_blockwise_moments(cells, monkeypatch):
    import spatialoc_ros.core.ann_retriever as ann

    gallery, bank = cells
    two = TwoStageRetriever(MemoryCells(gallery, bank), TERMS)
    assert two.kind == "flat"                       # 300 cells: far below FLAT_MAX_CELLS
    monkeypatch.setattr(ann, "FLAT_MAX_CELLS", 100)
    monkeypatch.setattr(ann, "_MOMENT_BLOCK", 64)    # 300 rows: five blocks, the last short
    big = TwoStageRetriever(MemoryCells(gallery, bank), TERMS)
    assert big.kind == "pca-sq8"
    x = gallery.descriptors.p_glo.double()
    torch.testing.assert_close(big.glo_mean, x.mean(0), rtol=0, atol=1e-12)
    centred = x - x.mean(0)
    torch.testing.assert_close(big.glo_cov, centred.t() @ centred / len(x), rtol=0, atol=1e-12)
    # the compressed index still shortlists every cell when asked for all of them, and its
    # best cells are mostly the flat scan's (4 of 8 dimensions kept, random vectors)
    query = make_queries(3)
    assert sorted(big.shortlist_rows(query, 300)[0].tolist()) == list(range(300))
    near = [len(set(big.shortlist_rows(query, 60)[b].tolist())
                & set(two.shortlist_rows(query, 60)[b].tolist())) for b in range(3)]
    assert min(near) >= 20  # chance alone: 60 · 60 / 300 = 12
