"""Cell banks: frozen PointNet++ features per cell, shared across cells for whole instances."""
import numpy as np
import pytest
import torch

from spatialoc_ros.data.constants import INSTANCE_CLASSES
from spatialoc_ros.data.kitti360pose import load_split
from spatialoc_ros.networks.pointnet import PointNet2, fold_batchnorm
from spatialoc_ros.core.cell_bank import CellBank, _object_seed, build_cell_bank, cell_seed
from spatialoc_ros.training.objects import objects_to_batch


@pytest.fixture(scope="module")
def bank_and_cells(tiny_dataset):
    torch.manual_seed(0)
    net = PointNet2(max_neighbours=8).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding is really exercised
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    cells = load_split(tiny_dataset, "val").cells[:4]
    return net, cells, build_cell_bank(cells, net, max_objects=28, seed=3, progress=False)


def test_folding_batchnorm_keeps_the_outputs(bank_and_cells):
    net, _, _ = bank_and_cells
    xyz, rgb = torch.rand(5, 256, 3), torch.rand(5, 256, 3)
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(net).features(xyz, rgb), net.features(xyz, rgb),
                                   atol=1e-4, rtol=1e-4)


def test_bank_features_equal_running_each_object_in_its_cell(bank_and_cells):
    net, cells, bank = bank_and_cells
    checked = {"instance": 0, "stuff": 0}
    with torch.no_grad():
        for i, cell in enumerate(cells):
            rng = np.random.default_rng(cell_seed(cell.id, 3))
            for j, obj in enumerate(cell.objects[:28]):
                if obj.label in INSTANCE_CLASSES:
                    key = (cell.scene, int(obj.instance_id), obj.label, len(obj.xyz))
                    xyz, rgb = objects_to_batch([obj], rng=_object_seed(key, 3))
                    kind = "instance"
                else:
                    xyz, rgb = objects_to_batch([obj], rng=rng)
                    kind = "stuff"
                expected = net.features(xyz, rgb)[0]
                scale = float(expected.abs().max()) + 1e-6
                assert float((bank.point_features[i, j] - expected).abs().max()) <= 2e-3 * scale
                checked[kind] += 1
    assert checked["instance"] > 0 and checked["stuff"] > 0
    assert bank.mask.sum() == sum(min(len(c.objects), 28) for c in cells)


def test_bank_round_trips_and_batches(bank_and_cells, tmp_path):
    _, cells, bank = bank_and_cells
    bank.save(tmp_path / "b.safetensors")
    again = CellBank.load(tmp_path / "b.safetensors")
    assert again.ids == bank.ids and torch.equal(again.point_features, bank.point_features)
    batch = bank.batch(torch.tensor([0, 1]), flip_x=torch.tensor([True, False]))
    n = int(bank.mask[[0, 1]].sum(1).max())
    assert batch["centers"].shape == (2, n, 3)
    valid = bank.mask[0, :n]
    torch.testing.assert_close(batch["centers"][0][valid, 0], 1 - bank.centers[0, :n][valid, 0])
