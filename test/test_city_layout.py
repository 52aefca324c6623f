"""Scenes with frames of their own laid out as districts of one frame (the scale benchmark)."""
import numpy as np
import torch

from spatialoc_ros.evaluation.city_layout import DISTRICT_MARGIN_M, district_offsets


def scenes_of(sizes_m, cells_per_scene=40, seed=0):
    """Cells of scenes whose frames overlap (every scene starts near its own origin)."""
    rng = np.random.default_rng(seed)
    origin, scene = [], []
    for s, extent in enumerate(sizes_m):
        xy = rng.uniform(-extent / 2, extent / 2, (cells_per_scene, 2))
        origin.append(xy)
        scene += [s] * cells_per_scene
    origin = torch.from_numpy(np.concatenate(origin))
    return origin, torch.full((len(origin),), 30.0, dtype=torch.float64), torch.tensor(scene)


def boxes(origin, size, scene):
    return [(origin[scene == s].amin(0), (origin + size[:, None])[scene == s].amax(0))
            for s in range(int(scene.max()) + 1)]


def test_districts_keep_each_scene_whole_and_apart():
    origin, size, scene = scenes_of([500.0, 1200.0, 300.0, 800.0, 50.0])
    offsets = district_offsets(origin, size, scene)
    assert offsets.shape == (5, 2)
    moved = origin + offsets[scene]
    # a translation per scene: distances inside a scene are kept (to float64 rounding of
    # coordinates of a few km, far below a millimetre)
    for s in range(5):
        a, b = origin[scene == s], moved[scene == s]
        assert torch.allclose(a[:, None] - a[None], b[:, None] - b[None], atol=1e-6)
    # no two districts' cells come closer than the margin along at least one axis
    placed = boxes(moved, size, scene)
    for i in range(5):
        for j in range(i + 1, 5):
            (lo1, hi1), (lo2, hi2) = placed[i], placed[j]
            gap = torch.maximum(lo2 - hi1, lo1 - hi2).max()
            assert gap >= DISTRICT_MARGIN_M - 1e-6
    # five scenes on a 3-column grid: the city is about 3 x 2 of the largest scene's extent
    span = (moved + size[:, None]).amax(0) - moved.amin(0)
    assert float(span[0]) > 2 * 1200.0 and float(span[1]) < 3 * 1300.0


def test_grown_copies_answer_from_another_district(tiny_dataset, tiny_weights, tmp_path,
                                                   copy_store):
    """The map's cells and a copy of them as a second scene: laid out in one frame, an answer
    from the copy is as far from the truth as the two districts are apart, not infinitely."""
    from spatialoc_ros.core.weights import WeightsBundle
    from spatialoc_ros.evaluation.confidence_fit import answers_of
    from spatialoc_ros.inference import Localizer

    loc = Localizer(tiny_dataset, WeightsBundle.load(tiny_weights, "cpu"),
                    scenes=["2013_05_28_drive_0010_sync"], device="cpu",
                    cache=tiny_weights / "cache", retriever="exhaustive")
    own = loc.num_cells
    loc.grow(copy_store(loc, tmp_path / "s"), "exhaustive")
    offsets = district_offsets(*loc.cell_frames())
    loc.shift_scenes(offsets)
    moved, _, scene = loc.cell_frames()
    shift = offsets[1] - offsets[0]
    assert torch.allclose(moved[own:] - moved[:own], shift.expand(own, 2), atol=1e-6)

    hints = [["The pose is north of a gray building.", "The pose is on-top of a dark-green "
              "sidewalk."]] * 2
    readings = loc.read([" ".join(h) for h in hints])
    cand = loc.consensus(loc.candidates([r.hints for r in readings], 4))
    # the truth of each query: its answer's place, in the answer's scene frame
    truth = cand.positions[:, 0] - offsets[scene[cand.rows[:, 0]]]
    # one query said to be in the map's scene, one in the copy's: the same text gets the same
    # answer, so exactly one of them is answered in another district
    query_scene = torch.tensor([0, 1])
    one = answers_of(loc, readings, cand, truth, query_scene, offsets)
    apart = scene[cand.rows[:, 0]] != query_scene
    assert torch.isfinite(one.err_xy).all()
    expected = offsets[query_scene] - offsets[scene[cand.rows[:, 0]]]
    assert torch.allclose(one.err_xy, expected, atol=1e-6)
    assert int(apart.sum()) == 1
    assert (one.err_xy[apart].norm(dim=1) > DISTRICT_MARGIN_M).all()
    assert not one.right[apart].any()
    # a frame per scene: the same answers in another scene are outside every ellipse
    separate = answers_of(loc, readings, cand, truth, query_scene)
    assert not torch.isfinite(separate.err_xy[apart]).any()


def test_only_the_two_frame_layouts_are_accepted():
    import pytest

    from spatialoc_ros.errors import SpatialocError
    from spatialoc_ros.evaluation.city_layout import FRAMES, check_frames

    for frames in FRAMES:
        check_frames(frames)
    with pytest.raises(SpatialocError, match="expected one of city, separate"):
        check_frames("world")
