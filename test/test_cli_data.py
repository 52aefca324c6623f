"""The ``spatialoc data`` commands, run in-process through ``cli.main``, once as a subprocess."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from spatialoc_ros import cli
from spatialoc_ros.data import stats as st
from spatialoc_ros.errors import DataError
from test_stats_show import TRAIN_SCENE, VAL_SCENE, make_records

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(capsys, *argv):
    """``main(argv)`` -> (status, stdout, stderr)."""
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status, err, *fragments):
    assert status == cli.EXIT_ERROR
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("spatialoc: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def kitti360pose():
    from spatialoc_ros.data import kitti360pose as module  # a broken import fails, never skips

    return module


@pytest.fixture()
def dataset(tmp_path):
    """The hand-built two-scene dataset of test_stats_show, written as a KITTI360Pose folder."""
    k = kitti360pose()
    records = make_records()
    root = tmp_path / "ds"
    for r in records:
        k.write_scene(root, r.scene, r.cells, r.poses)
    return root, records


# --------------------------------------------------------------------------- parser and dispatcher


def test_help_lists_the_data_commands(capsys):
    status, out, _ = run(capsys, "--help")
    assert status == 0 and "data" in out
    status, out, _ = run(capsys, "data", "--help")
    assert status == 0
    for name in ("synth", "stats", "show"):
        assert name in out


def test_usage_errors_return_status_2(capsys):
    status, _, err = run(capsys, "data", "synth", "--out", "x")
    assert status == 2 and "--preset" in err
    status, _, err = run(capsys, "data", "synth", "--preset", "huge", "--out", "x")
    assert status == 2 and "invalid choice" in err
    status, _, err = run(capsys)
    assert status == 2 and "required" in err


def test_missing_folder_is_one_line(capsys, tmp_path):
    missing = tmp_path / "nope"
    status, out, err = run(capsys, "data", "stats", missing)
    assert_one_line_error(status, err, str(missing), "no such dataset folder")
    assert out == ""
    status, _, err = run(capsys, "data", "show", missing, "--scene", "0010", "--out",
                         tmp_path / "x.png")
    assert_one_line_error(status, err, "no such dataset folder")
    assert not (tmp_path / "x.png").exists()


def test_expected_errors_are_one_line_and_bugs_keep_their_traceback(capsys, monkeypatch, tmp_path):
    def fail_with(exc):
        def collect_stats(*args, **kwargs):
            raise exc
        monkeypatch.setattr(st, "collect_stats", collect_stats)

    fail_with(DataError("first line\nsecond line"))
    status, _, err = run(capsys, "data", "stats", tmp_path)
    assert_one_line_error(status, err, "first line second line")

    fail_with(FileNotFoundError(2, "No such file or directory", "/data/cells/x.pkl"))
    status, _, err = run(capsys, "data", "stats", tmp_path)
    assert_one_line_error(status, err, "/data/cells/x.pkl: No such file or directory")

    fail_with(PermissionError(13, "Permission denied", "/root/secret"))
    status, _, err = run(capsys, "data", "stats", tmp_path)
    assert_one_line_error(status, err, "/root/secret: Permission denied")

    fail_with(OSError(28, "No space left on device", "/maps/city/cells.safetensors"))
    status, _, err = run(capsys, "data", "stats", tmp_path)
    assert_one_line_error(status, err, "/maps/city/cells.safetensors: No space left on device")

    fail_with(RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["data", "stats", str(tmp_path)])


def test_subprocess_missing_folder_prints_one_line_without_traceback(tmp_path):
    missing = tmp_path / "does-not-exist"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "spatialoc_ros", "data", "stats", str(missing)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.endswith("\n"), proc.stderr
    assert proc.stderr.startswith("spatialoc: error: ") and str(missing) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_does_not_import_heavy_libraries(tmp_path):
    code = ("import sys\nfrom spatialoc_ros.cli import main\nstatus = main(['--help'])\n"
            "heavy = [m for m in ('torch', 'open3d', 'matplotlib', "
            "'spatialoc_ros.data.kitti360pose') "
            "if m in sys.modules]\nprint('HEAVY', heavy, status)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY [] 0" in proc.stdout


# --------------------------------------------------------------------------- data synth


def test_synth_passes_its_arguments_and_prints_a_summary(capsys, monkeypatch, tmp_path):
    import spatialoc_ros.data as data_pkg

    calls, extra = [], []

    def synthesize(preset, seed, out, workers=None, progress=True, ply_dir=None, ply_copies=1,
                   scenes=None):
        calls.append((preset, seed, str(out), workers, progress))
        extra.append((ply_dir, ply_copies, scenes))
        return {"preset": preset, "seed": seed, "out": str(out), "seconds": 1.25, "scenes": {
            TRAIN_SCENE: {"cells": 10, "poses": 40},
            "2013_05_28_drive_0002_sync": {"cells": 5, "poses": 8},
            VAL_SCENE: {"cells": 7, "poses": 12}}}

    monkeypatch.setattr(data_pkg, "synth", SimpleNamespace(synthesize=synthesize), raising=False)
    status, out, _ = run(capsys, "data", "synth", "--preset", "small", "--out", tmp_path / "o",
                         "--workers", 3)
    assert status == 0
    assert calls == [("small", 0, str(tmp_path / "o"), 3, True)]
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()}
    assert rows["train"] == ["2", "15", "48"]
    assert rows["val"] == ["1", "7", "12"]
    assert rows["all"] == ["3", "22", "60"]
    assert out.rstrip().endswith(f"wrote {tmp_path / 'o'} in 1.2 s")

    run(capsys, "data", "synth", "--preset", "tiny", "--seed", 7, "--out", tmp_path / "p",
        "--quiet")
    assert calls[-1] == ("tiny", 7, str(tmp_path / "p"), None, False)
    assert extra[-1] == (None, 1, None)

    run(capsys, "data", "synth", "--preset", "tiny", "--out", tmp_path / "q", "--ply",
        tmp_path / "ply", "--ply-copies", 3, "--scenes", "0010", "0003")
    assert extra[-1] == (str(tmp_path / "ply"), 3, ["0010", "0003"])
    status, _, err = run(capsys, "data", "synth", "--preset", "tiny", "--out", tmp_path / "r",
                         "--ply-copies", 2)
    assert_one_line_error(status, err, "--ply-copies is at least 1 and needs --ply")


def _choices(command, dest):
    data = cli.build_parser()._subparsers._group_actions[0].choices["data"]
    sub = data._subparsers._group_actions[0].choices[command]
    return set(next(a for a in sub._actions if a.dest == dest).choices)


def test_split_choices_match_the_benchmark():
    from spatialoc_ros.data.constants import SPLITS

    assert _choices("stats", "split") == set(SPLITS) == {"train", "val", "test"}


def test_synth_presets_match_the_generator():
    from spatialoc_ros.data import synth
    assert _choices("synth", "preset") == set(synth.PRESETS) == {"tiny", "small", "benchmark"}


def test_synth_rejects_bad_worker_counts(capsys, tmp_path):
    status, _, err = run(capsys, "data", "synth", "--preset", "tiny", "--out", tmp_path,
                         "--workers", 0)
    assert_one_line_error(status, err, "--workers must be at least 1")


# ---------------------------------------------------------------------- data stats / show on files


def test_stats_json_on_a_written_folder(capsys, dataset):
    root, records = dataset
    status, out, err = run(capsys, "data", "stats", root, "--json")
    assert status == 0, err
    got = json.loads(out)
    expected = json.loads(json.dumps({"root": str(root), **st.compute_stats(records)}))
    assert got == expected
    assert got["scenes"][TRAIN_SCENE]["objects"] == 29
    assert got["totals"]["all"]["cells"] == 5


def test_stats_tables_and_split_filter(capsys, dataset):
    root, _ = dataset
    status, out, _ = run(capsys, "data", "stats", root)
    assert status == 0
    assert any(line.split()[:6] == [VAL_SCENE, "val", "2", "1", "36", "4"]
               for line in out.splitlines())
    status, out, _ = run(capsys, "data", "stats", root, "--split", "val", "--json")
    assert status == 0
    assert list(json.loads(out)["scenes"]) == [VAL_SCENE]
    # The train split needs all five of its scenes; only one is there.
    status, _, err = run(capsys, "data", "stats", root, "--split", "train")
    assert_one_line_error(status, err, "2013_05_28_drive_0002_sync")


def test_stats_on_an_empty_folder(capsys, tmp_path):
    kitti360pose()
    status, _, err = run(capsys, "data", "stats", tmp_path)
    assert_one_line_error(status, err, "no KITTI360Pose scenes")


def test_hostile_and_truncated_pickles_are_one_line_errors(capsys, dataset, tmp_path):
    root, _ = dataset
    cells_file = root / "cells" / f"{VAL_SCENE}.pkl"
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    cells_file.write_bytes(pickle.dumps([Exploit()]))
    status, _, err = run(capsys, "data", "stats", root)
    assert_one_line_error(status, err, str(cells_file))
    assert not marker.exists()

    train_file = root / "poses" / f"{TRAIN_SCENE}.pkl"
    train_file.write_bytes(train_file.read_bytes()[:100])
    status, _, err = run(capsys, "data", "show", root, "--scene", "0000", "--out",
                         tmp_path / "s.png")
    assert_one_line_error(status, err, str(train_file))


def test_show_writes_a_png_for_a_short_scene_name(capsys, dataset, tmp_path):
    from matplotlib.image import imread

    root, _ = dataset
    png = tmp_path / "pics" / "0000.png"
    status, out, err = run(capsys, "data", "show", root, "--scene", "0000", "--out", png)
    assert status == 0, err
    assert out.strip() == str(png)
    assert png.read_bytes()[:8] == PNG_MAGIC
    pixels = imread(png)
    assert pixels.reshape(-1, pixels.shape[2]).std(axis=0).max() > 0.01

    status, _, _ = run(capsys, "data", "show", root, "--scene", VAL_SCENE, "--out", png,
                       "--cells", 1)
    assert status == 0


def test_show_rejects_unknown_and_absent_scenes(capsys, dataset, tmp_path):
    root, _ = dataset
    status, _, err = run(capsys, "data", "show", root, "--scene", "9999", "--out",
                         tmp_path / "a.png")
    assert_one_line_error(status, err, "unknown scene '9999'")
    status, _, err = run(capsys, "data", "show", root, "--scene", "0003", "--out",
                         tmp_path / "b.png")
    assert_one_line_error(status, err, "2013_05_28_drive_0003_sync")
    status, _, err = run(capsys, "data", "show", root, "--scene", "0000", "--out",
                         tmp_path / "c.png", "--cells", 0)
    assert_one_line_error(status, err, "--cells")


# --------------------------------------------------------------------------- end to end


def test_synth_tiny_then_stats_and_show(capsys, tmp_path):
    out_dir = tmp_path / "tiny"
    status, out, err = run(capsys, "data", "synth", "--preset", "tiny", "--out", out_dir,
                           "--quiet", "--workers", 2)
    assert status == 0, err
    assert f"wrote {out_dir}" in out
    status, out, _ = run(capsys, "data", "stats", out_dir, "--json")
    assert status == 0
    stats = json.loads(out)
    assert len(stats["scenes"]) == 9
    assert [k for k in stats["totals"]] == ["train", "val", "test", "all"]
    assert stats["totals"]["train"]["scenes"] == 5 and stats["totals"]["test"]["scenes"] == 3
    assert stats["totals"]["all"]["poses"] > 0
    assert stats["hints"]["all"]["hints_per_pose"]["max"] == 6
    png = tmp_path / "tiny.png"
    status, _, err = run(capsys, "data", "show", out_dir, "--scene", "0010", "--out", png)
    assert status == 0, err
    assert png.stat().st_size > 5000
