"""The encoded gallery.

The fast scorer gives the losses' set similarity, the disk cache is keyed right.
"""
import torch
import torch.nn.functional as F

from spatialoc_ros.core import retrieval
from spatialoc_ros.core.retrieval import GalleryScorer, zscore
from spatialoc_ros.core.gallery import Gallery, gallery_key, load_or_encode_gallery
from spatialoc_ros.networks.outputs import CoarseOutputs
from spatialoc_ros.training.losses import set_similarity


def ragged(b, q, lengths_seed):
    g = torch.Generator().manual_seed(lengths_seed)
    lengths = torch.randint(1, q + 1, (b,), generator=g)
    return torch.arange(q)[None] < lengths[:, None]


def random_pair(b=7, c=23, q=6, n=9, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=g), dim=-1)

    query = CoarseOutputs(q_glo=unit(b, d), t_obj=unit(b, q, d), t_rel=unit(b, q, d),
                          t_mask=ragged(b, q, seed))
    gallery = CoarseOutputs(p_glo=unit(c, d), p_obj=unit(c, n, d), p_rel=unit(c, n, d),
                            p_mask=ragged(c, n, seed + 1))
    return query, gallery


def reference_scores(query, gallery):
    """The fused score written out with the training losses' set similarity.

    z(s_glo) + z(s_obj) + z(s_rel), see spatialoc_ros/core/retrieval.py.
    """
    return (zscore(query.q_glo @ gallery.p_glo.t())
            + zscore(set_similarity(query.t_obj, query.t_mask, gallery.p_obj, gallery.p_mask))
            + zscore(set_similarity(query.t_rel, query.t_mask, gallery.p_rel, gallery.p_mask)))


def test_scorer_equals_the_set_similarity_of_the_losses(monkeypatch):
    query, gallery = random_pair()
    want = reference_scores(query, gallery)
    torch.testing.assert_close(GalleryScorer(gallery)(query), want)
    # scoring in blocks of queries changes nothing
    monkeypatch.setattr(retrieval, "_ENTRIES_PER_CHUNK", 1)
    torch.testing.assert_close(GalleryScorer(gallery)(query), want)


def test_scorer_ignores_what_sits_in_padded_slots():
    query, gallery = random_pair(seed=3)
    want = GalleryScorer(gallery)(query)
    noisy_q = CoarseOutputs(**vars(query))
    noisy_q.t_obj = query.t_obj.masked_fill(~query.t_mask.unsqueeze(-1), 7.0)
    noisy_g = CoarseOutputs(**vars(gallery))
    noisy_g.p_rel = gallery.p_rel.masked_fill(~gallery.p_mask.unsqueeze(-1), -3.0)
    torch.testing.assert_close(GalleryScorer(noisy_g)(noisy_q), want)


def test_gallery_round_trips_and_refuses_a_broken_file(tmp_path):
    _, desc = random_pair()
    ids = [f"cell_{i}" for i in range(desc.p_glo.shape[0])]
    path = tmp_path / "g.safetensors"
    Gallery(ids, desc).save(path)
    back = Gallery.load(path)
    assert back.ids == ids and back.rows(["cell_3", "cell_0"]).tolist() == [3, 0]
    for name in ("p_glo", "p_obj", "p_rel", "p_mask"):
        assert torch.equal(getattr(back.descriptors, name), getattr(desc, name))
    path.write_bytes(b"not a safetensors file")
    assert Gallery.load(path) is None


class _Bank:
    def __init__(self, ids):
        self.ids = ids


def test_gallery_is_encoded_once_per_weights_and_map(tmp_path, monkeypatch):
    from spatialoc_ros.core import encoding

    _, desc = random_pair(c=4)
    calls = []

    def fake_encode(model, bank, device="cpu", progress=False):
        calls.append(list(bank.ids))
        return desc

    monkeypatch.setattr(encoding, "encode_gallery", fake_encode)
    weights = tmp_path / "coarse.safetensors"
    weights.write_bytes(b"weights v1")
    bank = _Bank(["a", "b", "c", "d"])
    first = load_or_encode_gallery(None, bank, tmp_path, weights, "bank-key")
    again = load_or_encode_gallery(None, bank, tmp_path, weights, "bank-key")
    assert len(calls) == 1 and again.ids == first.ids
    torch.testing.assert_close(again.descriptors.p_obj, desc.p_obj)
    weights.write_bytes(b"weights v2")  # new weights: a new key, encoded again
    load_or_encode_gallery(None, bank, tmp_path, weights, "bank-key")
    assert len(calls) == 2
    load_or_encode_gallery(None, bank, tmp_path, weights, "another-bank")
    assert len(calls) == 3
    assert gallery_key(weights, "x") != gallery_key(weights, "y")
    # no cache folder: always encodes
    load_or_encode_gallery(None, bank, None, weights, "bank-key")
    assert len(calls) == 4


def test_cache_moves_to_the_home_folder_when_the_dataset_is_read_only(tmp_path, monkeypatch):
    import os

    from spatialoc_ros.core.frozen_inputs import cache_dir

    data = tmp_path / "dataset"
    data.mkdir()
    assert cache_dir(data) == data / ".spatialoc_cache"
    (data / ".spatialoc_cache").rmdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    moved = cache_dir(data)
    assert moved.is_dir() and str(moved).startswith(
        str(tmp_path / "home" / ".cache" / "spatialoc_ros"))
    assert cache_dir(data, tmp_path / "explicit") == tmp_path / "explicit"
