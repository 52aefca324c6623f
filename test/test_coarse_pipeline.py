"""The coarse stage end to end on the tiny benchmark: train, resume, evaluate, load strictly."""
import json
import shutil

import pytest
import torch

from spatialoc_ros.cli import main
from spatialoc_ros.errors import SpatialocError
from spatialoc_ros.evaluation.evaluate import evaluate
from spatialoc_ros.networks.checkpoint import load_checkpoint, save_checkpoint
from spatialoc_ros.networks.coarse import CoarseConfig, CoarseModel
from spatialoc_ros.networks.pointnet import PointNet2
from spatialoc_ros.training.coarse_trainer import CoarseTrainConfig, train_coarse
from spatialoc_ros.training.queries import flip_sentence

SMALL = dict(d=32)


@pytest.fixture(scope="module")
def pointnet_stem(tmp_path_factory):
    """An untrained, cheap PointNet++ (few neighbours).

    The pipeline, not the features, is under test.
    """
    torch.manual_seed(0)
    model = PointNet2(max_neighbours=4)
    stem = tmp_path_factory.mktemp("pointnet") / "pointnet"
    save_checkpoint(model, stem, {"kind": "pointnet", "architecture": model.config()})
    return str(stem)


@pytest.fixture(scope="module")
def trained(tiny_dataset, pointnet_stem, tmp_path_factory):
    out = tmp_path_factory.mktemp("coarse")
    cfg = CoarseTrainConfig(data=str(tiny_dataset), out=str(out), epochs=1, batch_size=16,
                            pointnet=pointnet_stem, cache=str(out / "cache"), max_train_queries=96,
                            model=CoarseConfig(**SMALL))
    state = train_coarse(cfg, progress=False)
    return cfg, state


def test_training_writes_a_complete_weights_folder(trained):
    cfg, state = trained
    assert state["epoch"] == 1 and len(state["history"]) == 1
    for name in ("coarse.safetensors", "coarse.json", "pointnet.safetensors", "pointnet.json",
                 "coarse_last.pt"):
        assert (cfg.out + "/" + name) and __import__("pathlib").Path(cfg.out, name).exists(), name
    config = json.loads(open(f"{cfg.out}/coarse.json").read())
    assert config["architecture"]["d"] == 32 and config["architecture"]["token_dim"] == 384
    assert config["score_terms"] == ["global", "object", "relation"]
    assert set(config["metrics"]["val_recall"]) == {"1", "3", "5"}


def test_training_resumes_after_the_last_epoch(trained, capsys):
    cfg, _ = trained
    cfg.epochs = 2
    state = train_coarse(cfg, progress=False)
    assert "resuming after epoch 1" in capsys.readouterr().out
    assert [r["epoch"] for r in state["history"]] == [1, 2]


def test_eval_reports_recall_on_a_split_and_on_a_queries_file(trained, tiny_dataset, tmp_path):
    cfg, _ = trained
    report = evaluate(str(tiny_dataset), "val", cfg.out, cache=cfg.cache, progress=False)
    assert report["split"] == "val" and report["num_queries"] > 0
    recall = report["retrieval_recall"]
    assert set(recall) == {"1", "3", "5"} and 0 <= recall["1"] <= recall["3"] <= recall["5"] <= 1
    from spatialoc_ros.data.kitti360pose import load_split

    poses = load_split(tiny_dataset, "val").poses[:3]
    lines = [json.dumps({"text": p.text, "scene": "2013_05_28_drive_0010_sync",
                         "pose_w": list(p.pose_w)})
             for p in poses]
    queries = tmp_path / "q.jsonl"
    queries.write_text("\n".join(lines) + "\n")
    report = evaluate(str(tiny_dataset), "val", cfg.out, queries_file=str(queries),
                      cache=cfg.cache, progress=False)
    assert report["num_queries"] == 3


def test_eval_cli_json_shape_and_recall_plot(trained, tiny_dataset, capsys, tmp_path):
    cfg, _ = trained
    plot = tmp_path / "recall.png"
    assert main(["eval", "--data", str(tiny_dataset), "--split", "val", "--weights", cfg.out,
                 "--cache", cfg.cache, "--json", "--plot", str(plot)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"split", "num_queries", "retrieval_recall"} <= set(report)
    curve = [report["retrieval_recall_curve"][str(k)] for k in range(1, 11)]
    assert curve == sorted(curve) and curve[0] == report["retrieval_recall"]["1"]
    assert plot.stat().st_size > 5000

    # the saved report tabulates and plots again without the data or the weights
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(report))
    assert main(["eval", "--reports", str(saved), str(saved),
                 "--plot", str(tmp_path / "again.png")]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    r = report["retrieval_recall"]
    assert (table[2] == f"| {cfg.out} | {r['1']:.3f} | {r['3']:.3f} | {r['5']:.3f} |"
            and table[3] == table[2])
    assert (tmp_path / "again.png").stat().st_size > 5000


def test_eval_without_data_or_reports_is_a_one_line_error(tmp_path, capsys):
    assert main(["eval", "--split", "val"]) != 0
    assert capsys.readouterr().err.strip().count("\n") == 0
    bad = tmp_path / "bad.json"
    bad.write_text('{"split": "val"}')
    assert main(["eval", "--reports", str(bad)]) != 0
    err = capsys.readouterr().err
    assert "no retrieval_recall" in err and "Traceback" not in err


def test_eval_cli_with_several_weights_prints_a_table(trained, tiny_dataset, capsys, tmp_path):
    cfg, _ = trained
    other = tmp_path / "copy"
    shutil.copytree(cfg.out, other, ignore=shutil.ignore_patterns("*.pt"))
    assert main(["eval", "--data", str(tiny_dataset), "--split", "val", "--weights", cfg.out,
                 str(other), "--cache", cfg.cache, "--quiet"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[0] == "| weights | recall@1 | recall@3 | recall@5 |" and len(table) == 4
    first, second = (line.split(" | ")[1:] for line in table[2:])
    assert first == second  # the same weights give the same row
    assert table[2].startswith(f"| {cfg.out} |") and table[3].startswith(f"| {other} |")


def test_loading_weights_of_another_shape_names_the_tensor(trained):
    cfg, _ = trained
    with pytest.raises(SpatialocError, match=r"tensor '.*' has shape \[.*\], expected \[.*\]"):
        load_checkpoint(CoarseModel(CoarseConfig(d=64)), f"{cfg.out}/coarse")
    model, config = load_checkpoint(
        lambda c: CoarseModel(CoarseConfig.from_dict(c["architecture"])), f"{cfg.out}/coarse")
    assert config["kind"] == "coarse"


def test_missing_weights_is_a_one_line_error(tiny_dataset, tmp_path, capsys):
    assert main(["eval", "--data", str(tiny_dataset), "--split", "val",
                 "--weights", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "coarse.safetensors" in err


def test_flipping_swaps_direction_words_only():
    s = "The pose is east of a gray-green northeastern pole."
    assert flip_sentence(s, 0) == "The pose is west of a gray-green northeastern pole."
    assert flip_sentence(flip_sentence(s, 1), 1) == s
    assert (flip_sentence("The pose is north of a black road.", 1)
            == "The pose is south of a black road.")
