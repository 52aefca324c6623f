"""Query text checks.

Every kind of bad input gets a status and one line; odd but real text passes.
"""
import numpy as np
import pytest

from spatialoc_ros.data.ground import GroundHeights
from spatialoc_ros.data.schema import Cell, Object3d
from spatialoc_ros.core.query_text import QueryRejected, check_text


@pytest.mark.parametrize("text, status", [
    ("", "EMPTY_QUERY"), ("   \n\t ", "EMPTY_QUERY"), ("x" * 100_000, "QUERY_TOO_LONG"),
    ("\x00\x01\x02binary\xff\x7f", "NOT_TEXT"), (b"\xff\xfe\x00", "NOT_TEXT"),
    ("1234 5678 !!", "NOT_TEXT"),
    (12345, "NOT_TEXT"), (None, "NOT_TEXT"),
])
def test_bad_text_is_rejected_with_a_status_and_one_line(text, status):
    with pytest.raises(QueryRejected) as e:
        check_text(text)
    assert e.value.status == status and "\n" not in str(e.value) and str(e.value)


@pytest.mark.parametrize("text", ["The pose is north of a gray building.",
                                  "Die Pose ist nördlich eines Gebäudes.",
                                  "ポーズは建物の北です。", "  east of a pole  ", b"west of a lamp."])
def test_real_text_in_any_language_passes_trimmed(text):
    out = check_text(text)
    assert out == out.strip() and out


def test_ground_height_prefers_ground_objects_near_the_point():
    rng = np.random.default_rng(0)
    road = Object3d(0, 1, "road", np.c_[rng.random((500, 2)), np.full(500, 0.1)],
                    np.zeros((500, 3), np.float32))
    pole = Object3d(1, 2, "pole", np.c_[np.full((50, 2), 0.5), np.linspace(0.1, 0.5, 50)],
                    np.zeros((50, 3), np.float32))
    cell = Cell("0000_00000", "0000", np.array([100.0, 200.0, 10.0, 130.0, 230.0, 40.0]), 30.0,
                [road, pole])
    ground = GroundHeights(radius_m=3.0)
    assert abs(ground(cell, [115.0, 215.0]) - 13.0) < 1e-6  # road at z = 10 + 0.1 * 30
    empty = Cell("0000_00001", "0000", np.array([0.0, 0.0, -5.0, 30.0, 30.0, 25.0]), 30.0, [])
    assert ground(empty, [15.0, 15.0]) == -5.0
    only_pole = Cell("0000_00002", "0000", cell.bbox_w, 30.0, [pole])
    assert abs(ground(only_pole, [115.0, 215.0])
               - (10 + 30 * np.percentile(pole.xyz[:, 2], 5))) < 1e-6
