"""The memory-mapped cell store and row access across memory, store and stacks of both."""
import json

import numpy as np
import pytest
import torch

from spatialoc_ros.core.cell_bank import CellBank
from spatialoc_ros.core.cell_rows import MemoryCells, StackedCells
from spatialoc_ros.core.cell_store import CellStore, CellStoreWriter, open_store
from spatialoc_ros.core.gallery import Gallery
from spatialoc_ros.errors import DataError
from spatialoc_ros.networks.outputs import CoarseOutputs

SLOTS, DIM, POINT_DIM = 5, 8, 6


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def make_cells(count, seed=0, slots=SLOTS):
    """A random gallery and bank with valid slots first (every cell at least one)."""
    g = torch.Generator().manual_seed(seed)
    valid = torch.randint(1, slots + 1, (count,), generator=g)
    mask = torch.arange(slots)[None] < valid[:, None]
    valid_slot = mask[..., None]
    desc = CoarseOutputs(p_glo=_unit(torch.randn(count, DIM, generator=g)),
                         p_obj=_unit(torch.randn(count, slots, DIM, generator=g)) * valid_slot,
                         p_rel=_unit(torch.randn(count, slots, DIM, generator=g)) * valid_slot,
                         p_mask=mask)
    ids = [f"c{seed}_{i:04d}" for i in range(count)]
    bank = CellBank(ids, torch.rand(count, slots, POINT_DIM, generator=g) * valid_slot,
                    torch.rand(count, slots, 3, generator=g),
                    torch.rand(count, slots, 3, generator=g),
                    torch.randint(1, 500, (count, slots), generator=g) * mask, mask)
    return Gallery(ids, desc), bank


def write_store(folder, gallery, bank, key="k", capacity=None, chunk=7):
    writer = CellStoreWriter(folder, capacity or len(gallery), SLOTS, DIM, POINT_DIM, key=key)
    for start in range(0, len(gallery), chunk):
        rows = torch.arange(start, min(start + chunk, len(gallery)))
        d = gallery.descriptors
        part = CoarseOutputs(p_glo=d.p_glo[rows], p_obj=d.p_obj[rows], p_rel=d.p_rel[rows],
                             p_mask=d.p_mask[rows])
        fields = bank.batch(rows)  # trimmed to the chunk's largest object count: padded back
        writer.append([gallery.ids[i] for i in rows], f"scene{start % 2}", part, fields,
                      np.full(len(rows), 30.0), np.stack([rows.numpy() * 10.0,
                                                          rows.numpy() * -5.0], 1))
    return writer


def test_a_store_reads_back_what_was_written(tmp_path):
    gallery, bank = make_cells(40)
    write_store(tmp_path / "s", gallery, bank)
    store = CellStore(tmp_path / "s")
    assert len(store) == 40 and store.ids == gallery.ids
    rows = torch.tensor([39, 3, 3, 0, 17])  # any order, repeats allowed
    inst = store.instance(rows)
    d = gallery.descriptors
    # float16 keeps 11 significant bits: relative error at most 2**-11 on unit-norm entries
    torch.testing.assert_close(inst.p_obj, d.p_obj[rows], rtol=2 ** -10, atol=2 ** -14)
    torch.testing.assert_close(inst.p_rel, d.p_rel[rows], rtol=2 ** -10, atol=2 ** -14)
    assert torch.equal(inst.p_mask, d.p_mask[rows])
    assert inst.p_obj.dtype == torch.float32
    assert torch.equal(store.global_descriptors(), d.p_glo)  # float32: exact
    got, want = store.bank_batch(rows), bank.batch(rows)
    assert torch.equal(got["mask"], want["mask"]) and torch.equal(got["counts"], want["counts"])
    torch.testing.assert_close(got["point_features"], want["point_features"], rtol=2 ** -10,
                               atol=2 ** -14)
    assert torch.equal(got["centers"], want["centers"])
    assert torch.equal(got["colors"], want["colors"])
    assert np.array_equal(store.column("cell_size"), np.full(40, 30.0))
    assert store.scene_names()[6:8] == ["scene0", "scene1"]  # chunks of 7 rows


def test_a_store_opens_with_its_complete_rows_and_a_writer_resumes(tmp_path):
    gallery, bank = make_cells(30)
    writer = CellStoreWriter(tmp_path / "s", 100, SLOTS, DIM, POINT_DIM, key="same")
    d = gallery.descriptors
    first = torch.arange(12)
    writer.append(gallery.ids[:12], "a", CoarseOutputs(p_glo=d.p_glo[first], p_obj=d.p_obj[first],
                                                       p_rel=d.p_rel[first],
                                                       p_mask=d.p_mask[first]),
                  bank.batch(first), np.ones(12), np.zeros((12, 2)))
    assert len(CellStore(tmp_path / "s")) == 12  # capacity 100, 12 complete rows
    again = CellStoreWriter(tmp_path / "s", 100, SLOTS, DIM, POINT_DIM, key="same")
    assert again.rows == 12
    other = CellStoreWriter(tmp_path / "s", 100, SLOTS, DIM, POINT_DIM, key="other weights")
    assert other.rows == 0 and len(CellStore(tmp_path / "s")) == 0


def test_head_limits_the_rows(tmp_path):
    gallery, bank = make_cells(20)
    write_store(tmp_path / "s", gallery, bank)
    head = CellStore(tmp_path / "s").head(5)
    assert len(head) == 5 and head.ids == gallery.ids[:5]
    assert head.column("p_glo").shape[0] == 5


def test_a_folder_that_is_no_store(tmp_path):
    assert open_store(tmp_path) is None
    (tmp_path / "store.json").write_text("{")
    with pytest.raises(DataError, match="not a cell store"):
        CellStore(tmp_path)
    (tmp_path / "store.json").write_text(json.dumps({"format": 999}))
    with pytest.raises(DataError, match="format"):
        CellStore(tmp_path)


def test_stacked_rows_read_each_part(tmp_path):
    g1, b1 = make_cells(15, seed=1)
    g2, b2 = make_cells(25, seed=2, slots=SLOTS)
    write_store(tmp_path / "s", g2, b2)
    stack = StackedCells([MemoryCells(g1, b1), CellStore(tmp_path / "s")])
    assert len(stack) == 40
    torch.testing.assert_close(stack.global_descriptors(),
                               torch.cat([g1.descriptors.p_glo, g2.descriptors.p_glo]))
    rows = torch.tensor([16, 2, 39, 14, 15])
    inst = stack.instance(rows)
    for at, row in enumerate(rows.tolist()):
        g, r = (g1, row) if row < 15 else (g2, row - 15)
        torch.testing.assert_close(inst.p_obj[at], g.descriptors.p_obj[r], rtol=2 ** -10,
                                   atol=2 ** -14)
        assert torch.equal(inst.p_mask[at], g.descriptors.p_mask[r])
    batch = stack.bank_batch(rows)
    assert batch["mask"].shape[0] == 5
    assert torch.equal(batch["counts"][1, :int(b1.mask[2].sum())],
                       b1.counts[2, :int(b1.mask[2].sum())])


def test_repeated_rows_cycle_through_a_store_with_scenes_of_their_own(tmp_path):
    from spatialoc_ros.evaluation.scale import RepeatedRows

    gallery, bank = make_cells(10, seed=4)
    write_store(tmp_path / "s", gallery, bank)
    store = CellStore(tmp_path / "s")
    rep = RepeatedRows(store, 25)                       # 10 + 10 + 5
    assert len(rep) == 25 and rep.copies == 3
    glo = rep.global_descriptors()
    assert torch.equal(glo[:10], glo[10:20]) and torch.equal(glo[20:], glo[:5])
    rows = torch.tensor([23, 3, 13])
    assert torch.equal(rep.instance(rows).p_obj, store.instance(torch.tensor([3, 3, 3])).p_obj)
    assert torch.equal(rep.bank_batch(rows)["centers"], store.bank_batch(rows % 10)["centers"])
    scene = rep.column("scene")
    n = len(store.scenes)
    assert np.array_equal(scene[10:20], scene[:10] + n) and np.array_equal(scene[20:],
                                                                           scene[:5] + 2 * n)
    assert np.array_equal(rep.column("origin")[13], store.column("origin")[3])
    assert rep.scene_names()[13] == store.scene_names()[3] + "#1"
