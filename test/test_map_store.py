"""A map served from a memory-mapped store of its encoded cells (``core/map_store.py``)."""
import numpy as np
import pytest
import torch

SCENE = "2013_05_28_drive_0010_sync"
# float16 keeps 11 significant bits: a stored value is within 2^-11 of its size
FLOAT16_REL = 2.0 ** -11
# descriptors of the same cells encoded in other batches differ by float32 rounding only
FLOAT32_TOL = 1e-5


@pytest.fixture(scope="module")
def scene_map(tiny_dataset):
    from spatialoc_ros.core.map_source import open_map

    return open_map(tiny_dataset, [SCENE])


@pytest.fixture(scope="module")
def bundle(tiny_weights):
    from spatialoc_ros.core.weights import WeightsBundle

    return WeightsBundle.load(tiny_weights, "cpu")


def close16(a, b):
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    scale = b.abs().max().clamp(min=1.0)
    return bool(((a - b).abs() <= 2 * FLOAT16_REL * scale + FLOAT32_TOL).all())


def test_store_rows_are_the_in_memory_rows(scene_map, bundle, tmp_path, monkeypatch):
    import spatialoc_ros.core.encoding as encoding

    from spatialoc_ros.core.cell_rows import MemoryCells
    from spatialoc_ros.core.coarse_stage import load_coarse_stage
    from spatialoc_ros.core.map_store import load_or_build_map_store

    cells = scene_map.cells
    stage = load_coarse_stage(bundle, str(tmp_path), "test", cells, None, cache=tmp_path / "c",
                              progress=False)
    memory = MemoryCells(stage.gallery, stage.bank)
    # encoded in small chunks (instances shared by cells of two chunks, chunk edges), and
    # filled from the cached bank and gallery of the in-memory rows
    encoded = load_or_build_map_store(bundle, cells, tmp_path / "s", "test", progress=False,
                                      chunk=7)

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded again although the map's gallery is cached")

    monkeypatch.setattr(encoding, "encode_gallery", no_encoding)
    copied = load_or_build_map_store(bundle, cells, tmp_path / "c", "test", progress=False,
                                     chunk=7)
    for store in (encoded, copied):
        check_rows(store, memory, cells, stage)


def check_rows(store, memory, cells, stage):
    assert store.ids == [c.id for c in cells] == stage.gallery.ids
    torch.testing.assert_close(store.global_descriptors(), memory.global_descriptors(),
                               rtol=0, atol=FLOAT32_TOL)
    rows = torch.tensor([0, 5, 6, 7, len(cells) - 1, 3])
    got, want = store.instance(rows), memory.instance(rows)
    assert torch.equal(got.p_mask, want.p_mask)
    assert close16(got.p_obj, want.p_obj) and close16(got.p_rel, want.p_rel)
    got, want = store.bank_batch(rows), memory.bank_batch(rows)
    assert torch.equal(got["mask"], want["mask"]) and torch.equal(got["counts"], want["counts"])
    torch.testing.assert_close(got["colors"], want["colors"], rtol=0, atol=0)
    torch.testing.assert_close(got["centers"], want["centers"], rtol=0, atol=0)
    assert close16(got["point_features"], want["point_features"])


def test_a_stopped_build_resumes_after_its_last_chunk(scene_map, bundle, tmp_path, monkeypatch):
    import spatialoc_ros.core.encoding as encoding
    from spatialoc_ros.core.map_store import load_or_build_map_store

    cells = scene_map.cells
    whole = load_or_build_map_store(bundle, cells, tmp_path / "a", "test", progress=False,
                                    chunk=16)
    original, calls = encoding.encode_gallery, []

    def stopping(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # stopped while encoding the third chunk
        return original(*args, **kwargs)

    monkeypatch.setattr(encoding, "encode_gallery", stopping)
    with pytest.raises(KeyboardInterrupt):
        load_or_build_map_store(bundle, cells, tmp_path / "b", "test", progress=False, chunk=16)
    monkeypatch.setattr(encoding, "encode_gallery", original)
    from spatialoc_ros.core.cell_store import open_store

    partial = open_store(next((tmp_path / "b").glob("store-*")))
    assert len(partial) == 32  # two chunks complete
    counted = []
    monkeypatch.setattr(encoding, "encode_gallery",
                        lambda *a, **k: counted.append(1) or original(*a, **k))
    resumed = load_or_build_map_store(bundle, cells, tmp_path / "b", "test", progress=False,
                                      chunk=16)
    assert len(counted) == -(-(len(cells) - 32) // 16)  # only the chunks still missing
    assert resumed.ids == whole.ids
    torch.testing.assert_close(resumed.global_descriptors(), whole.global_descriptors(),
                               rtol=0, atol=FLOAT32_TOL)
    rows = torch.arange(len(cells))
    assert close16(resumed.instance(rows).p_obj, whole.instance(rows).p_obj)


@pytest.mark.timeout(300)
def test_a_localizer_served_from_the_store_answers_as_from_float16_rows(scene_map, tiny_weights,
                                                                        tmp_path):
    """Served from the store, a localizer answers as one served from memory whose instance and
    PointNet++ features are rounded to float16 (what the store keeps). (Chunked encoding against
    the gallery's is :func:`test_store_rows_are_the_in_memory_rows`.)"""
    import copy

    from spatialoc_ros.core.cell_rows import MemoryCells
    from spatialoc_ros.core.cell_store import CellStore
    from spatialoc_ros.core.retriever import make_retriever
    from spatialoc_ros.inference import Localizer

    memory = Localizer(scene_map, tiny_weights, device="cpu", cache=tmp_path / "c",
                       cell_rows="memory")
    stored = Localizer(scene_map, tiny_weights, device="cpu", cache=tmp_path / "c",
                       cell_rows="store")
    assert isinstance(stored.rows, CellStore) and stored.coarse.bank is None
    assert [c.id for c in stored.cells] == [c.id for c in memory.cells]
    gallery, bank = copy.deepcopy(memory.coarse.gallery), copy.deepcopy(memory.coarse.bank)
    for name in ("p_obj", "p_rel"):
        setattr(gallery.descriptors, name, getattr(gallery.descriptors, name).half().float())
    bank.point_features = bank.point_features.half().float()
    memory.rows = MemoryCells(gallery, bank)
    memory.retriever = make_retriever("auto", memory.rows, memory.weights.score_terms)
    for pose in scene_map.poses[:12]:
        a, b = memory.localize(pose.text), stored.localize(pose.text)
        assert [h.cell_id for h in b.hypotheses] == [h.cell_id for h in a.hypotheses]
        # the store was filled from this gallery's cache (the memory localizer started first),
        # so both read the same float16-rounded values; the scores may differ only by the order
        # in which the two row sources hand them to the same arithmetic
        np.testing.assert_allclose([h.score for h in b.hypotheses],
                                   [h.score for h in a.hypotheses], rtol=0, atol=1e-3)
        np.testing.assert_allclose(b.covariance_xy, a.covariance_xy, rtol=1e-3, atol=1e-3)
    # a second start opens the store the first one built
    again = Localizer(scene_map, tiny_weights, device="cpu", cache=tmp_path / "c",
                      cell_rows="store")
    assert again.rows.folder == stored.rows.folder and len(again.rows) == len(stored.rows)


def test_only_known_cell_row_modes():
    from spatialoc_ros.core.map_store import STORE_MIN_CELLS, use_store
    from spatialoc_ros.errors import SpatialocError

    assert not use_store("auto", STORE_MIN_CELLS) and use_store("auto", STORE_MIN_CELLS + 1)
    assert use_store("store", 1) and not use_store("memory", 10 ** 7)
    with pytest.raises(SpatialocError, match="expected one of auto, memory, store"):
        use_store("disk", 10)
