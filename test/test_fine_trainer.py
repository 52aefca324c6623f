"""The fine stage's training on the tiny benchmark: outputs, resume, the ablation, PMC, the CLI."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spatialoc_ros.cli import main
from spatialoc_ros.data.kitti360pose import load_split
from spatialoc_ros.networks.checkpoint import load_checkpoint, save_checkpoint
from spatialoc_ros.networks.pointnet import PointNet2
from spatialoc_ros.networks.ugfl import FineConfig, FineModel
from spatialoc_ros.training import fine_trainer
from spatialoc_ros.training.fine_trainer import (FineTrainConfig, NeighbourCells, cell_target,
                                                 fine_metrics, permute_objects, train_fine)

QUICK = dict(epochs=1, batch_size=16, warmup_epochs=1, max_train_queries=48, max_val_queries=24)


@pytest.fixture(scope="module")
def shared(tiny_dataset, tmp_path_factory):
    """An untrained, cheap PointNet++ and one cache folder for every run of this module."""
    torch.manual_seed(0)
    model = PointNet2(max_neighbours=4)
    root = tmp_path_factory.mktemp("fine")
    save_checkpoint(model, root / "pointnet", {"kind": "pointnet", "architecture": model.config()})
    return dict(data=str(tiny_dataset), pointnet=str(root / "pointnet"), cache=str(root / "cache"))


def config(shared, out, precision_head=True, **kw) -> FineTrainConfig:
    return FineTrainConfig(out=str(out), **shared, **{**QUICK, **kw},
                           model=FineConfig(d=32, precision_head=precision_head))


@pytest.fixture(scope="module")
def trained(shared, tmp_path_factory):
    cfg = config(shared, tmp_path_factory.mktemp("fine_out"))
    return cfg, train_fine(cfg, progress=False)


def test_training_writes_a_complete_weights_folder(trained):
    cfg, state = trained
    for name in ("fine.safetensors", "fine.json", "pointnet.safetensors", "pointnet.json",
                 "fine_last.pt"):
        assert Path(cfg.out, name).exists(), name
    config = json.loads(Path(cfg.out, "fine.json").read_text())
    assert (config["kind"] == "fine" and config["text_encoder"] == "minilm"
            and config["stored_dtype"] == "float16")
    assert config["architecture"]["d"] == 32 and config["architecture"]["token_dim"] == 384
    assert (config["architecture"]["precision_head"] is True
            and config["architecture"]["max_objects"] == 28)
    val = config["metrics"]["val"]
    assert val["mean_error_m"] == state["best"] and len(config["metrics"]["history"]) == 1
    assert 0 <= val["median_error_m"] and set(val["recall"]) == {"5", "10", "15"}
    assert 0 <= val["coverage_1sigma"] <= val["coverage_2sigma"] <= 1
    assert config["training"]["pmc_prob"] == 0.5 and config["training"]["lr"] == 3e-4
    model, _ = load_checkpoint(lambda c: FineModel(FineConfig.from_dict(c["architecture"])),
                               Path(cfg.out, "fine"))
    assert model.objects.count_std.item() > 1  # standardised with the training objects' statistics


def test_an_interrupted_run_resumes_from_fine_last_pt(trained, monkeypatch, capsys):
    cfg, _ = trained
    cfg.epochs = 2
    calls = {"n": 0}
    real_loss = fine_trainer.fine_loss

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_loss(*args)

    monkeypatch.setattr(fine_trainer, "fine_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_fine(cfg, progress=False)
    assert json.loads(torch.load(Path(cfg.out, "fine_last.pt"),
                                 weights_only=True)["state"])["epoch"] == 1
    monkeypatch.setattr(fine_trainer, "fine_loss", real_loss)
    capsys.readouterr()
    state = train_fine(cfg, progress=False)
    assert "resuming after epoch 1" in capsys.readouterr().out
    assert [r["epoch"] for r in state["history"]] == [1, 2]
    assert [r["lr"] for r in state["history"]] == [1e-5, 3e-4]  # one warm-up epoch, then lr


def test_the_ablation_trains_without_lambda(shared, tmp_path):
    cfg = config(shared, tmp_path, precision_head=False, pmc_prob=0.0, max_train_queries=32,
                 max_val_queries=16)
    state = train_fine(cfg, progress=False)
    val = state["history"][0]["val"]
    assert "coverage_1sigma" not in val and np.isfinite(val["mean_error_m"])
    config_json = json.loads(Path(tmp_path, "fine.json").read_text())
    assert config_json["architecture"]["precision_head"] is False
    model, _ = load_checkpoint(lambda c: FineModel(FineConfig.from_dict(c["architecture"])),
                               tmp_path / "fine")
    assert model.precision_mlp is None


def test_cli_trains_and_reports_json(shared, tmp_path, capsys):
    args = ["train", "fine", "--data", shared["data"], "--out", str(tmp_path),
            "--pointnet", shared["pointnet"],
            "--cache", shared["cache"], "--epochs", "1", "--batch-size", "16", "--dim", "32",
            "--max-train-queries", "32", "--max-val-queries", "16", "--quiet"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["epochs"] == 1 and report["weights"].endswith("fine.safetensors")
    assert report["best_val_mean_error_m"] > 0


@pytest.mark.parametrize("bad, words", [(["--pmc-prob", "2"], "--pmc-prob"),
                                        (["--dim", "30"], "--dim"),
                                        (["--epochs", "0"], "--epochs"),
                                        (["--warmup-epochs", "-1"], "--warmup")])
def test_cli_bad_arguments_are_one_line_errors(shared, tmp_path, capsys, bad, words):
    args = ["train", "fine", "--data", shared["data"], "--out", str(tmp_path),
            "--pointnet", shared["pointnet"]]
    assert main(args + bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("spatialoc: error:") and words in err
    assert not Path(tmp_path, "fine_last.pt").exists()


# --- targets, PMC, object shuffling, metrics --------------------------------------------------


def test_targets_are_offsets_from_the_cell_centre_in_the_poses_frame(tiny_dataset):
    train = load_split(tiny_dataset, "train")
    for pose in train.poses[:50]:
        target = cell_target(train.cells_by_id[pose.cell_id], pose.pose_w)
        assert np.allclose(target, pose.pose[:2] - 0.5, atol=1e-6)


def test_pmc_draws_eligible_neighbours_only(tiny_dataset):
    train = load_split(tiny_dataset, "train")
    pmc = NeighbourCells(train, threshold=0.4)
    rng = np.random.default_rng(0)
    with_candidates = 0
    for i, pose in enumerate(train.poses[:60]):
        ids, probs = pmc.candidates(i)
        neighbours = set(train.directions[pose.cell_id].values())
        assert set(ids) <= neighbours and pose.cell_id not in ids
        if ids:
            with_candidates += 1
            assert np.isclose(probs.sum(), 1.0)
            for cid in ids:
                assert np.abs(cell_target(train.cells_by_id[cid], pose.pose_w)).max() <= 0.4
            assert pmc.draw(i, rng) in ids
        else:
            assert pmc.draw(i, rng) == pose.cell_id
    assert with_candidates > 0


def test_permuting_objects_moves_whole_objects_and_keeps_padding_last():
    mask = torch.tensor([[True] * 5 + [False] * 2, [True] * 2 + [False] * 5])
    cells = dict(point_features=torch.arange(14.0).view(2, 7, 1).expand(2, 7, 4),
                 colors=torch.rand(2, 7, 3),
                 centers=torch.arange(14.0).view(2, 7, 1).expand(2, 7, 3).clone(),
                 counts=torch.arange(14).view(2, 7), mask=mask)
    out = permute_objects(cells, np.random.default_rng(1))
    assert torch.equal(out["mask"], mask)
    assert torch.equal(out["counts"].float(), out["centers"][..., 0]) and torch.equal(
        out["counts"].float(), out["point_features"][..., 0])
    assert (sorted(out["counts"][0, :5].tolist()) == [0, 1, 2, 3, 4]
            and out["counts"][0, 5:].tolist() == [5, 6])
    assert not torch.equal(out["counts"][0, :5], cells["counts"][0, :5])


def test_fine_metrics_in_metres():
    offsets = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.5]])
    targets = np.zeros((3, 2))
    m = fine_metrics(offsets, targets, np.full(3, 30.0), precision=np.array([1.0, 1.0, 1.0]))
    assert np.isclose(m["mean_error_m"], (0 + 3 + 15) / 3) and np.isclose(m["median_error_m"], 3)
    assert m["recall"] == {"5": 2 / 3, "10": 2 / 3, "15": 1.0}
    assert m["coverage_1sigma"] == 1.0
