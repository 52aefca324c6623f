"""The trainers' shared skeleton (training/loop.py): resuming, the best epoch, one format."""
import json

import numpy as np
import pytest
import torch

from spatialoc_ros.networks.checkpoint import load_config
from spatialoc_ros.training.loop import fit, improves, last_path
from spatialoc_ros.training.runtime import Distributed, load_last


@pytest.fixture
def one_process(monkeypatch):
    """A Distributed of one process on the CPU, whatever the environment says."""
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    return Distributed(torch.device("cpu"))


def toy_run(out, dist, epochs, scores=None, crash_at=None, minimise=True):
    """A linear model fitted by SGD with momentum and a StepLR schedule through ``fit``.

    Validation returns the training error, or ``scores[epoch - 1]`` when given.
    Returns (state, weights, the best saves as (epoch, len(history)), begin's states).
    """
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
    x = torch.linspace(-1, 1, 24).view(8, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    saves, begun = [], []

    def train_epoch(epoch):
        if epoch == crash_at:
            raise KeyboardInterrupt
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        return {"epoch": epoch, "loss": loss.item(), "lr": opt.param_groups[0]["lr"]}

    def validate(record):
        with torch.no_grad():
            record["val"] = ((model(x) - y) ** 2).mean().item()
        return record["val"] if scores is None else scores[record["epoch"] - 1]

    state = fit("toy", out, dist, model, opt, epochs, train_epoch, validate,
                lambda record, history: saves.append((record["epoch"], len(history))),
                scheduler=sched, minimise=minimise, fresh={"extra": [1, 2]},
                begin=lambda s: begun.append(json.loads(json.dumps(s))),
                best_format="best error {:.4f}")
    return state, {k: v.clone() for k, v in model.state_dict().items()}, saves, begun


def test_an_interrupted_run_resumes_to_the_state_of_an_uninterrupted_one(
        one_process, tmp_path, capsys):
    straight, weights, saves, _ = toy_run(tmp_path / "a", one_process, 3)
    assert [r["epoch"] for r in straight["history"]] == [1, 2, 3]
    assert straight["best_epoch"] == 3 and saves == [(1, 1), (2, 2), (3, 3)]  # error falls

    with pytest.raises(KeyboardInterrupt):
        toy_run(tmp_path / "b", one_process, 3, crash_at=2)
    probe = torch.nn.Linear(3, 1)
    state = load_last(last_path(tmp_path / "b", "toy"), probe,
                      torch.optim.SGD(probe.parameters(), lr=1, momentum=0.9))
    assert state["epoch"] == 1 and state["extra"] == [1, 2]
    capsys.readouterr()
    resumed, resumed_weights, resumed_saves, begun = toy_run(tmp_path / "b", one_process, 3)
    out = capsys.readouterr().out
    assert f"resuming after epoch 1 (best error {state['best']:.4f})" in out
    assert begun[0]["epoch"] == 1 and begun[0]["history"] == state["history"]
    # the same operations on the same float32 values, the momentum buffers and the schedule
    # restored bit for bit: nothing can round differently, so the comparison is exact
    assert resumed == straight and resumed_saves == [(2, 2), (3, 3)]
    for k in weights:
        torch.testing.assert_close(resumed_weights[k], weights[k], rtol=0, atol=0)
    assert [r["lr"] for r in resumed["history"]] == [0.05, 0.025, 0.0125]

    again, _, again_saves, _ = toy_run(tmp_path / "b", one_process, 3)  # finished: nothing to do
    assert again == straight and again_saves == []


@pytest.mark.parametrize("minimise, best, best_epoch, saves", [(False, 0.5, 2, [1, 2]),
                                                               (True, 0.2, 1, [1])])
def test_the_best_epoch_follows_the_validation_score(one_process, tmp_path, minimise, best,
                                                     best_epoch, saves):
    state, _, saved, _ = toy_run(tmp_path, one_process, 3, scores=[0.2, 0.5, 0.4],
                                 minimise=minimise)
    assert (state["best"], state["best_epoch"]) == (best, best_epoch)
    assert [epoch for epoch, _ in saved] == saves
    assert improves(1.0, None) and improves(1.0, None, minimise=True)
    assert not improves(0.5, 0.5) and not improves(0.5, 0.5, minimise=True)


def test_sharding_gives_every_rank_as_many_distinct_batches(one_process):
    batches = [np.array([i]) for i in range(10)]
    assert one_process.shard(batches) is batches
    shards = []
    for rank in range(3):
        one_process.world, one_process.rank = 3, rank
        shards.append([int(b[0]) for b in one_process.shard(batches)])
    assert [len(s) for s in shards] == [3, 3, 3]  # DDP steps all ranks together
    assert sorted(sum(shards, [])) == list(range(9))


@pytest.fixture(scope="module")
def pointnet_run(tiny_dataset, tmp_path_factory):
    from spatialoc_ros.training.pointnet_trainer import train_pointnet

    out = tmp_path_factory.mktemp("pointnet_run")
    train_pointnet(tiny_dataset, out, epochs=1, batch_size=2, seed=0, device="cpu", max_objects=4,
                   progress=False, max_eval_objects=4)
    return out


def test_all_three_trainers_write_and_read_one_resume_format(tiny_weights, pointnet_run):
    from spatialoc_ros.networks.coarse import CoarseConfig, CoarseModel
    from spatialoc_ros.networks.pointnet import PointNet2
    from spatialoc_ros.networks.ugfl import FineConfig, FineModel

    builds = {"pointnet": lambda arch: PointNet2(**arch),
              "coarse": lambda arch: CoarseModel(CoarseConfig.from_dict(arch)),
              "fine": lambda arch: FineModel(FineConfig.from_dict(arch))}
    best_score = {"pointnet": lambda m: m["val"]["accuracy"],
                  "coarse": lambda m: m["val_recall"]["5"],
                  "fine": lambda m: m["val"]["mean_error_m"]}
    folders = {"pointnet": pointnet_run, "coarse": tiny_weights, "fine": tiny_weights}
    for stage, out in folders.items():
        path = last_path(out, stage)
        assert path.name == f"{stage}_last.pt"
        saved = torch.load(path, weights_only=True)
        with_scheduler = stage == "coarse"  # StepLR; the others set their rates themselves
        expected = {"model", "optimizer", "state"} | ({"scheduler"} if with_scheduler else set())
        assert set(saved) == expected, stage
        state = json.loads(saved["state"])
        assert {"epoch", "best", "best_epoch", "history"} <= set(state), stage
        assert state["epoch"] == state["best_epoch"] == 1, stage
        assert [r["epoch"] for r in state["history"]] == [1], stage
        config = load_config(out / stage)
        assert state["best"] == best_score[stage](config["metrics"]), stage

        model = builds[stage](config["architecture"])
        opt = torch.optim.Adam(model.parameters())
        sched = torch.optim.lr_scheduler.StepLR(opt, 5) if with_scheduler else None
        assert load_last(path, model, opt, sched) == state
        for k, v in model.state_dict().items():
            assert torch.equal(v, saved["model"][k]), (stage, k)
        assert opt.state_dict()["state"].keys() == saved["optimizer"]["state"].keys()
