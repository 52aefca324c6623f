"""The synthetic city benchmark: format rules, determinism, ambiguity."""
from collections import Counter

import numpy as np
import pytest

from spatialoc_ros.data import constants as C
from spatialoc_ros.data.kitti360pose import available_scenes, load_split
from spatialoc_ros.data.synth import build_scene


@pytest.fixture(scope="module")
def tiny_split(tiny_dataset):
    return {name: load_split(tiny_dataset, name) for name in C.SPLITS}


def test_tiny_preset_writes_every_scene_and_split(tiny_dataset, tiny_split):
    assert sorted(available_scenes(tiny_dataset)) == C.ALL_SCENES
    for name, split in tiny_split.items():
        assert len(split.cells) >= C.MIN_CELLS_PER_SPLIT, name
        assert len(split.poses) > 0, name


def test_cells_follow_the_generation_rules(tiny_split):
    for split in tiny_split.values():
        for cell in split.cells:
            assert len(cell.id) == 10 and cell.id.startswith(cell.scene + "_")
            assert cell.cell_size == pytest.approx(30.0)
            np.testing.assert_allclose(cell.bbox_w[3:] - cell.bbox_w[:3], 30.0)
            assert len(cell.objects) >= C.NUM_MENTIONED
            assert [o.id for o in cell.objects] == list(range(len(cell.objects)))
            for o in cell.objects:
                assert o.label in C.CLASSES
                if o.label in C.STUFF_CLASSES:  # cropped to the cube and at least 250 points
                    assert len(o.xyz) >= C.STUFF_MIN_POINTS
                    assert o.xyz.min() >= -1e-9 and o.xyz.max() <= 1 + 1e-9
                else:  # kept whole: at least a third inside
                    inside = np.all((o.xyz >= 0) & (o.xyz <= 1), axis=1)
                    assert inside.mean() >= 1 / 3 - 1e-9


def test_poses_follow_the_generation_rules(tiny_split):
    for split in tiny_split.values():
        centers = np.stack([c.center_w for c in split.cells])
        ids = [c.id for c in split.cells]
        for pose in split.poses:
            best = split.cells_by_id[pose.cell_id]
            assert len(pose.hints) == C.NUM_MENTIONED
            assert pose.described_by in C.DESCRIBE_STRATEGIES
            np.testing.assert_allclose(best.to_cell(pose.pose_w), pose.pose)
            assert np.all(pose.pose >= 0) and np.all(pose.pose <= 1)
            # the best cell is the nearest cell centre (3-D) of the pose's scene
            same_scene = [i for i, cid in enumerate(ids) if cid[:4] == pose.cell_id[:4]]
            d = np.linalg.norm(centers[same_scene] - pose.pose_w, axis=1)
            assert ids[same_scene[int(np.argmin(d))]] == pose.cell_id
            for h in pose.hints:
                assert h.direction in C.DIRECTIONS and h.object_color_text in C.COLOR_NAMES
                assert h.text == (f"The pose is {h.direction} of a "
                                  f"{h.object_color_text} {h.object_label}.")
                if h.is_matched:
                    obj = best.objects[h.object_id]
                    assert obj.instance_id == h.object_instance_id and obj.label == h.object_label
                    np.testing.assert_allclose(h.best_offset_center,
                                               pose.pose[:2] - obj.center[:2])


def test_same_seed_same_scene_and_other_seed_differs():
    scene = "2013_05_28_drive_0003_sync"
    a_cells, a_poses, _ = build_scene(scene, "tiny", seed=5)
    b_cells, b_poses, _ = build_scene(scene, "tiny", seed=5)
    assert [c.id for c in a_cells] == [c.id for c in b_cells]
    assert [p.text for p in a_poses] == [p.text for p in b_poses]
    for ca, cb in zip(a_cells, b_cells):
        for oa, ob in zip(ca.objects, cb.objects):
            np.testing.assert_array_equal(oa.xyz, ob.xyz)
            np.testing.assert_array_equal(oa.rgb, ob.rgb)
    c_cells, c_poses, _ = build_scene(scene, "tiny", seed=6)
    assert [p.text for p in c_poses] != [p.text for p in a_poses]


def test_classes_and_colours_recur_across_cells(tiny_split):
    """No single object identifies a cell: hinted (colour, class) pairs occur in many cells."""
    cells = tiny_split["train"].cells
    per_cell = [set((o.color_text, o.label) for o in c.objects) for c in cells]
    pair_cells = Counter(p for s in per_cell for p in s)
    hinted = Counter((h.object_color_text, h.object_label)
                     for p in tiny_split["train"].poses for h in p.hints)
    common = sum(n for pair, n in hinted.items() if pair_cells[pair] >= 3)
    assert common / sum(hinted.values()) > 0.8
    labels = Counter(o.label for c in cells for o in c.objects)
    assert len(labels) >= 10
    assert max(labels.values()) / sum(labels.values()) < 0.5
