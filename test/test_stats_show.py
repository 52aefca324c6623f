"""Dataset statistics and the scene picture, on a small hand-built dataset with known answers.

The dataset: a train scene (0000) with three cells of 6, 7 and 16 objects and
three poses, and a val scene (0010) with two cells of 30 and 6 objects and one
pose. Every figure asserted below is worked out by hand from that layout.
"""
import json

import numpy as np
import pytest

from spatialoc_ros.data import stats as st
from spatialoc_ros.data.constants import COLOR_CENTERS, COLOR_NAMES
from spatialoc_ros.data.schema import Cell, Hint, Object3d, Pose
from spatialoc_ros.errors import DataError

TRAIN_SCENE = "2013_05_28_drive_0000_sync"
VAL_SCENE = "2013_05_28_drive_0010_sync"

# (class, colour word, count) per cell.
TRAIN_CELLS = {
    "0000_00000": [("building", "gray", 2), ("road", "black", 2), ("pole", "dark-green", 2)],
    "0000_00001": [("building", "gray", 2), ("road", "black", 2), ("pole", "dark-green", 2),
                   ("lamp", "green", 1)],
    "0000_00002": [("vegetation", "green", 10), ("terrain", "beige", 6)],
}
VAL_CELLS = {
    "0010_00000": [("sidewalk", "gray", 20), ("road", "black", 10)],
    "0010_00001": [("building", "beige", 3), ("pole", "gray", 3)],
}
# (best cell, strategy, [(class, colour word, matched)]) per pose; 6 hints each.
TRAIN_POSES = [
    ("0000_00000", "closest", [("building", "gray", True)] * 2 + [("road", "black", True)] * 2
     + [("pole", "dark-green", True)] * 2),
    ("0000_00001", "class", [("lamp", "green", True), ("building", "gray", True),
                             ("road", "black", True), ("pole", "dark-green", True),
                             ("building", "gray", True), ("road", "black", True)]),
    ("0000_00002", "direction", [("vegetation", "gray", False)]
     + [("vegetation", "green", True)] * 3
     + [("terrain", "beige", True)] * 2),
]
VAL_POSES = [
    ("0010_00001", "closest", [("building", "beige", True)] * 3 + [("pole", "gray", True)] * 3),
]


def make_object(idx, label, color, rng):
    """An object of 40 points in a small blob, coloured exactly at a colour centre."""
    centre = rng.uniform(0.15, 0.85, size=3)
    xyz = centre + rng.normal(scale=0.02, size=(40, 3))
    rgb = np.tile(COLOR_CENTERS[COLOR_NAMES.index(color)], (40, 1)).astype(np.float32)
    return Object3d(id=idx, instance_id=1000 + idx, label=label, xyz=xyz, rgb=rgb)


def make_cells(spec, rng):
    cells = []
    for k, (cell_id, groups) in enumerate(spec.items()):
        x0 = 10.0 * k
        cell = Cell(id=cell_id, scene=cell_id[:4],
                    bbox_w=np.array([x0, 0.0, 0.0, x0 + 30, 30.0, 30.0]), cell_size=30.0)
        for label, color, n in groups:
            for _ in range(n):
                cell.objects.append(make_object(len(cell.objects), label, color, rng))
        cells.append(cell)
    return cells


def make_hint(cell, label, color, matched):
    """A hint naming the first object of that class and colour in ``cell`` (when matched)."""
    oid = None
    if matched:
        oid = next(o.id for o in cell.objects if o.label == label and o.color_text == color)
    z2 = np.zeros(2)
    return Hint(object_instance_id=7, object_label=label,
                object_color_rgb=COLOR_CENTERS[COLOR_NAMES.index(color)].astype(np.float32),
                object_color_text=color, direction="north", offset_center=z2, offset_closest=z2,
                closest_point=z2, is_matched=matched, object_id=oid,
                best_offset_center=z2 if matched else None,
                best_offset_closest=z2 if matched else None)


def make_poses(spec, cells):
    by_id = {c.id: c for c in cells}
    poses = []
    for cell_id, strategy, hints in spec:
        cell = by_id[cell_id]
        pose = np.array([0.5, 0.5, 0.1])
        poses.append(Pose(pose=pose, pose_w=cell.to_world(pose), cell_id=cell_id,
                          scene=cell_id[:4], hints=[make_hint(cell, *h) for h in hints],
                          described_by=strategy))
    return poses


def make_records():
    """The two scenes as SceneRecords (train 0000, val 0010)."""
    rng = np.random.default_rng(3)
    train_cells, val_cells = make_cells(TRAIN_CELLS, rng), make_cells(VAL_CELLS, rng)
    return [
        st.SceneRecords(TRAIN_SCENE, "train", train_cells, make_poses(TRAIN_POSES, train_cells)),
        st.SceneRecords(VAL_SCENE, "val", val_cells, make_poses(VAL_POSES, val_cells)),
    ]


@pytest.fixture(scope="module")
def records():
    return make_records()


@pytest.fixture(scope="module")
def stats(records):
    return st.compute_stats(records)


# --------------------------------------------------------------------------- stats


def test_split_of_maps_drive_names():
    assert st.split_of(TRAIN_SCENE) == "train"
    assert st.split_of("2013_05_28_drive_0003_sync") == "test"
    assert st.split_of(VAL_SCENE) == "val"
    assert st.split_of("2099_01_01_drive_0042_sync") == "other"
    assert st.split_order(["other", "test", "train"]) == ["train", "test", "other"]


def test_scene_counts(stats):
    assert list(stats["scenes"]) == [TRAIN_SCENE, VAL_SCENE]
    assert stats["scenes"][TRAIN_SCENE] == {
        "split": "train", "cells": 3, "poses": 3, "objects": 29,
        "classes": {"building": 4, "pole": 4, "lamp": 1, "road": 4, "vegetation": 10,
                    "terrain": 6},
    }
    assert stats["scenes"][VAL_SCENE] == {
        "split": "val", "cells": 2, "poses": 1, "objects": 36,
        "classes": {"building": 3, "pole": 3, "road": 10, "sidewalk": 20},
    }


def test_totals_per_split_and_overall(stats):
    assert list(stats["totals"]) == ["train", "val", "all"]
    assert stats["totals"]["train"]["scenes"] == 1
    assert stats["totals"]["train"]["objects"] == 29
    assert stats["totals"]["all"] == {
        "scenes": 2, "cells": 5, "poses": 4, "objects": 65,
        "classes": {"building": 7, "pole": 7, "lamp": 1, "road": 14, "sidewalk": 20,
                    "vegetation": 10, "terrain": 6},
    }
    # Class names come in the benchmark's class order (instance classes, then stuff).
    assert list(stats["totals"]["all"]["classes"]) == [
        "building", "pole", "lamp", "road", "sidewalk", "vegetation", "terrain"]


def test_objects_per_cell(stats):
    opc = stats["objects_per_cell"]
    # Thresholds are strict: a cell of exactly 16 objects is not crowded.
    assert opc["train"] == pytest.approx(
        {"min": 6, "median": 7.0, "mean": 29 / 3, "max": 16, "frac_gt_16": 0.0, "frac_gt_28": 0.0})
    assert opc["val"] == pytest.approx(
        {"min": 6, "median": 18.0, "mean": 18.0, "max": 30, "frac_gt_16": 0.5, "frac_gt_28": 0.5})
    assert opc["all"] == pytest.approx(
        {"min": 6, "median": 7.0, "mean": 13.0, "max": 30, "frac_gt_16": 0.2, "frac_gt_28": 0.2})
    assert isinstance(opc["all"]["min"], int) and isinstance(opc["all"]["max"], int)


def test_hint_statistics(stats):
    h = stats["hints"]["all"]
    assert h["hints"] == 24
    assert h["hints_per_pose"] == {"min": 6, "median": 6.0, "mean": 6.0, "max": 6}
    assert h["matched_fraction"] == pytest.approx(23 / 24)
    assert h["classes"] == {"building": 7, "pole": 6, "lamp": 1, "road": 4, "vegetation": 4,
                            "terrain": 2}
    assert h["matched_classes"]["vegetation"] == 3
    assert h["colors"] == {"dark-green": 3, "gray": 8, "black": 4, "green": 4, "beige": 5}
    assert h["described_by"] == {"closest": 2, "class": 1, "direction": 1}
    assert stats["hints"]["val"]["described_by"] == {"closest": 1}
    assert stats["hints"]["train"]["hints"] == 18


def test_candidate_cells_per_query(stats):
    train = stats["ambiguity"]["train"]
    # Pose 1 fits cells 0 and 1; pose 2 only cell 1 (the lamp); pose 3 none (no gray vegetation).
    assert train["sampled_queries"] == 3 and train["gallery_cells"] == 3
    assert train["candidate_cells"] == {"min": 0, "median": 1.0, "mean": 1.0, "max": 2}
    assert train["candidate_fraction_mean"] == pytest.approx(1 / 3)
    assert train["unique_fraction"] == pytest.approx(1 / 3)
    assert train["best_cell_contains_fraction"] == pytest.approx(2 / 3)
    # Ignoring colour, pose 3 fits its own cell and pose 1 still fits two.
    assert train["class_only_cells"] == pytest.approx({"min": 1, "median": 1.0, "mean": 4 / 3,
                                                       "max": 2})
    val = stats["ambiguity"]["val"]
    assert val["candidate_cells"]["max"] == 1 and val["unique_fraction"] == 1.0
    assert set(stats["ambiguity"]) == {"train", "val"}


def test_pair_multiplicity_counts():
    """Two mentions of the same (colour, class) need two such objects in a cell."""
    records = make_records()
    index = st.PairIndex(records[0].cells)
    pose = records[0].poses[0]
    assert index.cells_with_pairs(pose).tolist() == [True, True, False]
    pose.hints[2] = pose.hints[0]  # now three gray buildings: no cell has three
    assert index.cells_with_pairs(pose).tolist() == [False, False, False]


def test_sampling_is_seeded_and_bounded(records):
    poses = records[0].poses * 10
    a = st.sample_poses(poses, 7, seed=1)
    assert len(a) == 7
    assert a == st.sample_poses(poses, 7, seed=1)
    assert st.sample_poses(poses, 0, seed=1) == poses
    assert st.compute_stats(records, sample=2)["ambiguity"]["train"]["sampled_queries"] == 2


def test_stats_json_shape(stats):
    text = json.dumps(stats)
    back = json.loads(text)
    assert set(back) == {"scenes", "totals", "objects_per_cell", "hints", "ambiguity"}
    for entry in back["scenes"].values():
        assert set(entry) == {"split", "cells", "poses", "objects", "classes"}
    for entry in back["totals"].values():
        assert set(entry) == {"scenes", "cells", "poses", "objects", "classes"}


def test_human_output_has_aligned_tables(stats):
    text = st.format_stats(stats)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("scene "))
    row = next(line for line in lines if line.startswith(TRAIN_SCENE))
    assert row.split() == [TRAIN_SCENE, "train", "3", "3", "29", "6"]
    # Right-aligned numbers end in the same column as their header.
    assert row.index("29") + 2 == header.index("objects") + len("objects")
    for title in ("Sizes", "Objects per cell", "Classes (all splits)", "Hints",
                  "Hint colour words"):
        assert any(line.startswith(title) for line in lines), title
    assert any(line.split()[:2] == ["sidewalk", "20"] for line in lines)


def test_require_dataset_dir(tmp_path):
    st.require_dataset_dir(tmp_path)
    with pytest.raises(DataError, match="no such dataset folder"):
        st.require_dataset_dir(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        st.require_dataset_dir(tmp_path / "file")


# --------------------------------------------------------------------------- show


def test_resolve_scene_accepts_short_and_full_names():
    from spatialoc_ros.data.kitti360pose import resolve_scene

    assert resolve_scene("0010") == VAL_SCENE
    assert resolve_scene(VAL_SCENE) == VAL_SCENE
    assert resolve_scene("0042", ["2099_01_01_drive_0042_sync"]) == "2099_01_01_drive_0042_sync"
    with pytest.raises(DataError, match="unknown scene '0001'"):
        resolve_scene("0001")


def test_hint_segments_end_at_matched_object_centres():
    from spatialoc_ros.data.show import hint_segments

    rec = make_records()[0]
    rec.poses[2].hints[0].object_id = 0  # a stale index on an unmatched hint must not draw a line
    by_id = {c.id: c for c in rec.cells}
    segments = hint_segments(rec.poses, by_id, count=3)
    assert len(segments) == 6 + 6 + 5  # the unmatched hint of pose 3 draws no line
    cell = by_id["0000_00002"]
    start, end = segments[-1]
    np.testing.assert_allclose(start, rec.poses[2].pose_w[:2])
    np.testing.assert_allclose(
        end, cell.to_world(cell.objects[rec.poses[2].hints[-1].object_id].center[:2]))


def test_world_points_are_subsampled_and_in_world_frame(records):
    from spatialoc_ros.data.show import world_points

    cells = records[1].cells
    xy, labels = world_points(cells, np.random.default_rng(0), per_object=10, max_points=250)
    assert xy.shape == (250, 2) and labels.shape == (250,)
    assert set(labels) <= {"sidewalk", "road", "building", "pole"}
    assert xy[:, 0].min() >= 0.0 and xy[:, 0].max() <= 40.0  # both cells span x in [0, 40] m


def test_render_scene_writes_a_real_picture(records, tmp_path):
    from matplotlib.colors import to_rgb
    from matplotlib.image import imread

    from spatialoc_ros.data.show import CLASS_COLORS, render_scene

    rec = records[0]
    out = render_scene(rec.cells, rec.poses, tmp_path / "sub" / "scene.png", title="test scene")
    assert out == tmp_path / "sub" / "scene.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    pixels = imread(out)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 200
    colours = np.unique(pixels.reshape(-1, pixels.shape[2]).round(2), axis=0)
    assert len(colours) > 10  # background, grid, several class colours, poses, text
    # The object points themselves are drawn in their class colours (left of the legend).
    plot_area = pixels[:, : int(pixels.shape[1] * 0.8), :3]
    for name in ("building", "vegetation"):
        target = np.array(to_rgb(CLASS_COLORS[name]))
        assert (np.abs(plot_area - target).max(axis=-1) < 0.1).sum() > 50, name


def test_cells_subset_keeps_first_cells_and_their_poses(records):
    from spatialoc_ros.data.show import _cells_subset

    rec = records[0]
    cells, poses = _cells_subset(list(reversed(rec.cells)), rec.poses, 2)
    assert [c.id for c in cells] == ["0000_00000", "0000_00001"]
    assert [p.cell_id for p in poses] == ["0000_00000", "0000_00001"]
    assert _cells_subset(rec.cells, rec.poses, None) == (rec.cells, rec.poses)
