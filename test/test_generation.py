"""The generation procedure: direction words, hint selection, grounding, cells, poses."""
import numpy as np
import pytest

from spatialoc_ros.data import constants as C
from spatialoc_ros.data.cells import (SceneIndex, SceneObject, build_cell, grid_cell_centers,
                                      subsample_locations)
from spatialoc_ros.data.describe import (_round_robin, describe_in_pose_cell, direction_word,
                                         ground_in_best_cell)
from spatialoc_ros.data.schema import Cell, Object3d, color_name


@pytest.mark.parametrize(
    "v, word",
    [
        ((0.0, 0.3), "north"),
        ((0.0, -0.3), "south"),
        ((0.3, 0.1), "east"),
        ((-0.3, 0.1), "west"),
        ((0.2, 0.2), "north"),  # ties go to north/south
        ((-0.2, -0.2), "south"),
        ((0.03, 0.03), "on-top"),  # closer than 1.5 m
    ],
)
def test_direction_words(v, word):
    assert direction_word(np.array(v), np.zeros(2)) == word


def test_colour_names_are_nearest_centres():
    for i, centre in enumerate(C.COLOR_CENTERS):
        assert color_name(centre) == C.COLOR_NAMES[i]
    assert color_name([0, 0, 0]) == "black"
    assert color_name([1, 1, 1]) == "bright-gray"


def _plane(x0, x1, y0, y1, z=0.0, spacing=0.4):
    xs, ys = np.meshgrid(np.arange(x0, x1, spacing), np.arange(y0, y1, spacing))
    return np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, z)], 1)


def _obj(iid, label, xyz, grey=0.5):
    return SceneObject(iid, label, xyz, np.full((len(xyz), 3), grey, np.float32))


def test_build_cell_crops_and_splits_stuff_and_keeps_instances_whole():
    # two strips, one instance
    road = np.concatenate([_plane(-20, 20, -3, 3), _plane(-20, 20, 8, 14)])
    pole_in = _obj(2, "pole", np.array([[1.0, 1.0, z] for z in np.linspace(0, 6, 40)]))
    half_out = np.array([[14.0 + 0.1 * k, 0.0, 1.0] for k in range(40)])  # 1/4 inside x <= 15
    pole_out = _obj(3, "pole", half_out)
    extra = [_obj(10 + k, "lamp",
                  np.array([[-10.0 + 3 * k, 5.0, z] for z in np.linspace(0, 5, 30)]))
             for k in range(4)]
    index = SceneIndex([_obj(1, "road", road), pole_in, pole_out] + extra)
    bbox = np.array([-15.0, -15.0, -15.0, 15.0, 15.0, 15.0])
    cell = build_cell(index, bbox, "0000_00001", "0000")
    assert cell is not None
    labels = [o.label for o in cell.objects]
    assert labels.count("road") == 2  # the two strips are separate DBSCAN clusters
    assert "pole" in labels and len([o for o in cell.objects if o.instance_id == 3]) == 0
    roads = [o for o in cell.objects if o.label == "road"]
    for r in roads:  # stuff is cropped: normalised coordinates inside [0, 1]
        assert r.xyz.min() >= 0 and r.xyz.max() <= 1
    assert [o.id for o in cell.objects] == list(range(len(cell.objects)))
    # fewer than six objects -> no cell
    assert build_cell(SceneIndex([pole_in]), bbox, "0000_00002", "0000") is None


def test_subsampling_is_greedy_and_grid_follows_locations():
    traj = np.stack([np.arange(0, 100.0, 1.0), np.zeros(100), np.zeros(100)], 1)
    traj = np.concatenate([traj, traj[::-1]])  # driving back adds nothing
    locs = subsample_locations(traj, 10.0)
    assert len(locs) == 10
    assert np.all(np.diff(locs[:, 0]) >= 10.0)
    locs[:, 1] = np.linspace(0, 30, 10)
    centers = grid_cell_centers(locs)
    assert np.all(np.mod(centers[:, :2] - [int(locs[:, 0].min()), int(locs[:, 1].min())],
                         10.0) == 0)


def _cell_with(objects):
    return Cell("0000_00000", "0000", np.array([0, 0, 0, 30, 30, 30.0]), 30.0, objects)


def test_strategies_pick_six_by_their_rules():
    objs = []
    labels = ["pole", "pole", "pole", "lamp", "lamp", "road", "terrain", "building"]
    for i, lab in enumerate(labels):
        p = np.array([[0.5 + 0.04 * (i + 1), 0.5, 0.5]])
        objs.append(Object3d(i, 100 + i, lab, np.repeat(p, 3, 0),
                             np.full((3, 3), 0.5, np.float32)))
    cell = _cell_with(objs)
    pose = np.array([0.5, 0.5, 0.5])
    closest = describe_in_pose_cell(cell, pose, "closest")
    assert [h.obj.id for h in closest] == [0, 1, 2, 3, 4, 5]
    by_class = describe_in_pose_cell(cell, pose, "class")
    assert [h.obj.label for h in by_class] == ["pole", "lamp", "road", "terrain", "building",
                                               "pole"]
    assert all(h.direction == "west" or h.direction == "on-top" for h in closest)
    far = _cell_with(objs[:5])
    assert describe_in_pose_cell(far, pose, "closest") is None


def test_round_robin_groups_in_order_of_first_appearance():
    items = ["a1", "b1", "a2", "c1", "a3", "b2"]
    assert _round_robin(items, lambda s: s[0], 5) == ["a1", "b1", "c1", "a2", "b2"]


def test_grounding_matches_same_instance_within_tolerance():
    obj = Object3d(0, 7, "pole", np.array([[0.4, 0.5, 0.5]]), np.full((1, 3), 0.5, np.float32))
    hint = describe_in_pose_cell(_cell_with([obj] * 6), np.array([0.5, 0.5, 0.5]), "closest")[0]
    # the best cell is shifted by 3 m: the same pole appears 0.1 further east in its coordinates
    moved = Object3d(3, 7, "pole", np.array([[0.5, 0.5, 0.5]]), np.full((1, 3), 0.5, np.float32))
    other = Object3d(4, 8, "pole", np.array([[0.6, 0.5, 0.5]]), np.full((1, 3), 0.5, np.float32))
    best = _cell_with([other, moved])
    (g,) = ground_in_best_cell([hint], best, np.array([0.6, 0.5, 0.5]))
    assert g.is_matched and g.object_id == 3
    np.testing.assert_allclose(g.best_offset_closest, [0.1, 0.0])
    np.testing.assert_allclose(g.offset_closest, [0.1, 0.0])
    (u,) = ground_in_best_cell([hint], _cell_with([other]), np.array([0.6, 0.5, 0.5]))
    assert not u.is_matched and u.object_id is None
