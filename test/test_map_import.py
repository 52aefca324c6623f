"""``spatialoc map import``: a KITTI360Pose scene written as a map folder, served alike."""
import json

import numpy as np
import pytest

from spatialoc_ros.cli import main

SCENE = "2013_05_28_drive_0010_sync"
FLOAT32_EPS = 1e-6  # the map file stores cell-normalised points as float32 (|p| <~ 2)


@pytest.fixture(scope="module")
def imported(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported") / "site"
    assert main(["map", "import", str(tiny_dataset), "--scene", "0010", "--out", str(out),
                 "--json"]) == 0
    return out


def test_the_scene_is_written_cell_for_cell(imported, tiny_dataset):
    from spatialoc_ros.core.map_source import open_map

    meta = json.loads((imported / "map.json").read_text())
    assert meta["name"] == "scene_0010" and meta["sources"][0]["kitti360pose_scene"] == SCENE
    want = open_map(tiny_dataset, [SCENE]).cells
    got = open_map(imported).cells
    assert len(got) == len(want) == meta["counts"]["cells"]
    for a, b in zip(got, want):
        number = int(b.id.rsplit("_", 1)[1])
        assert a.id == f"scene_0010_{number:05d}" and a.scene == "scene_0010"
        np.testing.assert_array_equal(a.bbox_w, b.bbox_w)
        assert [(o.label, o.instance_id) for o in a.objects] == \
            [(o.label, o.instance_id) for o in b.objects]
        for x, y in zip(a.objects, b.objects):
            np.testing.assert_allclose(x.xyz, y.xyz, rtol=0, atol=FLOAT32_EPS)
            np.testing.assert_allclose(x.rgb, y.rgb, rtol=0, atol=FLOAT32_EPS)


@pytest.mark.timeout(300)
def test_the_imported_map_answers_as_the_scene_does(imported, tiny_dataset, tiny_weights,
                                                    tmp_path):
    from spatialoc_ros.core.map_source import open_map
    from spatialoc_ros.inference import Localizer

    kitti = Localizer(tiny_dataset, tiny_weights, scenes=[SCENE], device="cpu",
                      cache=tiny_weights / "cache")
    built = Localizer(imported, tiny_weights, device="cpu", cache=tmp_path / "cache")
    for pose in open_map(tiny_dataset, [SCENE]).poses[:3]:
        a, b = kitti.localize(pose.text), built.localize(pose.text)
        # the same cells in the same order; positions agree far below a centimetre (points
        # stored as float32 may round the features' inputs)
        assert [int(h.cell_id.rsplit("_", 1)[1]) for h in a.hypotheses] == \
            [int(h.cell_id.rsplit("_", 1)[1]) for h in b.hypotheses]
        np.testing.assert_allclose([h.position for h in a.hypotheses],
                                   [h.position for h in b.hypotheses], atol=1e-3)


def test_bad_imports_are_one_line_errors(imported, tiny_dataset, tmp_path, capsys):
    assert main(["map", "import", str(tiny_dataset), "--scene", "0010",
                 "--out", str(imported)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["map", "import", str(tiny_dataset), "--scene", "9999",
                 "--out", str(tmp_path / "x")]) == 2
    assert "unknown scene" in capsys.readouterr().err
    assert main(["map", "import", str(tmp_path), "--scene", "0010",
                 "--out", str(tmp_path / "y")]) == 2
    assert "not a KITTI360Pose folder" in capsys.readouterr().err
    # --force replaces a map (and only a map)
    again = tmp_path / "again"
    for name in ("first", "second"):
        assert main(["map", "import", str(tiny_dataset), "--scene", SCENE, "--out", str(again),
                     "--force", "--name", name, "--json"]) == 0
    assert json.loads((again / "map.json").read_text())["name"] == "second"
    capsys.readouterr()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    assert main(["map", "import", str(tiny_dataset), "--scene", "0010",
                 "--out", str(tmp_path / "notes"), "--force"]) == 2
    assert "not a map folder" in capsys.readouterr().err
    assert (tmp_path / "notes" / "a.txt").read_text() == "mine"
