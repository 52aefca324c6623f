"""The ROS layer's pure parts.

Pose/covariance/result conversions, markers, map cloud, query buffering.
"""
import math
import threading
import time

import numpy as np
import pytest
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from spatialoc_ros.data.schema import Cell, Object3d
from spatialoc_ros.inference import Hypothesis, Localization
from spatialoc_ros.msg import LocalizationResult
from spatialoc_ros.core.query_text import QueryRejected, check_text
from spatialoc_ros.ros.conversions import (MAX_COVARIANCE, confidence, pose_covariance,
                                           pose_stamped, result_msg, safe_covariance_xy,
                                           status_code)
from spatialoc_ros.ros.map_cloud import map_points, pack_rgb, xyzrgb_cloud
from spatialoc_ros.ros.markers import ellipse_axes, localization_markers, named_classes
from spatialoc_ros.ros.parameters import PARAMETERS, Settings
from spatialoc_ros.ros.query_buffer import PendingQuery, QueryBuffer, UtteranceAccumulator

TEXT = "The pose is north of a gray building. The pose is on-top of a dark-green sidewalk."


def cell(cell_id, x0, y0, objects=()):
    return Cell(cell_id, cell_id[:4], np.array([x0, y0, 0.0, x0 + 30.0, y0 + 30.0, 30.0]), 30.0,
                list(objects))


def obj(i, label, center, n=20, rgb=(0.5, 0.5, 0.5)):
    rng = np.random.default_rng(i)
    xyz = np.asarray(center, float) + 0.02 * rng.standard_normal((n, 3))
    return Object3d(i, i, label, xyz, np.tile(np.asarray(rgb, np.float32), (n, 1)))


CELLS = {
    "0010_00001": cell("0010_00001", 0.0, 0.0, [obj(0, "building", [0.3, 0.3, 0.2]),
                                                obj(1, "sidewalk", [0.5, 0.6, 0.0]),
                                                obj(2, "pole", [0.7, 0.2, 0.1]),
                                                obj(3, "building", [0.8, 0.8, 0.2])]),
    "0010_00002": cell("0010_00002", 10.0, 0.0, [obj(4, "road", [0.5, 0.5, 0.0])]),
    "0010_00003": cell("0010_00003", 20.0, 0.0),
}


def localization(cov=((4.0, 1.0), (1.0, 9.0)), recognised=2):
    hyps = [Hypothesis(r, cid, "0010", 3.0 - r, np.array([15.0 + 10 * r, 15.0, 1.5]),
                       np.eye(2) * (2.0 + r), 16.0 / (r + 1)) for r, cid in enumerate(CELLS)]
    return Localization(TEXT, TEXT.split(". "), hyps, np.asarray(cov, float), recognised,
                        {"total": 5.0})


def header():
    h = Header(frame_id="map")
    h.stamp.sec, h.stamp.nanosec = 1700000000, 5
    return h


def as_matrix(cov36):
    return np.asarray(cov36, float).reshape(6, 6)


# --- pose and covariance --------------------------------------------------------------------


def test_covariance_layout_follows_amcl():
    c = as_matrix(pose_covariance([[4.0, 1.5], [1.5, 9.0]], yaw_variance=2.5))
    assert c.shape == (6, 6) and np.array_equal(c, c.T)
    assert (c[0, 0], c[0, 1], c[1, 0], c[1, 1], c[5, 5]) == (4.0, 1.5, 1.5, 9.0, 2.5)
    rest = c.copy()
    rest[:2, :2] = 0.0
    rest[5, 5] = 0.0
    assert not rest.any(), "z, roll, pitch and the cross terms stay 0 (RViz draws a flat ellipse)"


@pytest.mark.parametrize("cov, yaw", [
    ([[1e12, 0.0], [0.0, 1e12]], 1e15),
    ([[-3.0, 0.0], [0.0, 2.0]], -1.0),
    ([[np.nan, 0.0], [0.0, 1.0]], np.inf),
    ([[np.inf, 1.0], [1.0, np.inf]], np.nan),
    ([[4.0, 10.0], [10.0, 9.0]], 1.0),  # not PSD
    ([[4.0, -5.0], [-5.0, 9.0]], 1.0),  # negative correlation, not PSD either
])
def test_covariance_is_finite_bounded_and_psd(cov, yaw):
    c = as_matrix(pose_covariance(cov, yaw))
    assert np.isfinite(c).all() and (c >= 0).all() and (c <= MAX_COVARIANCE).all()
    assert np.linalg.eigvalsh(c[:2, :2]).min() >= -1e-6 * max(1.0, c[0, 0])
    assert np.array_equal(c, c.T)


def test_unusable_covariance_means_maximal_doubt():
    c = as_matrix(pose_covariance([[np.nan, 0.0], [0.0, 1.0]], np.nan))
    assert c[0, 0] == c[1, 1] == c[5, 5] == MAX_COVARIANCE and c[0, 1] == 0.0


def test_negative_correlation_becomes_the_smallest_covering_axis_aligned_ellipse():
    cov = np.array([[4.0, -3.0], [-3.0, 9.0]])
    safe = safe_covariance_xy(cov)
    assert safe[0, 1] == safe[1, 0] == 0.0
    assert np.linalg.eigvalsh(safe - cov).min() >= -1e-9, (
        "the published ellipse contains the model's")
    assert safe[0, 0] == pytest.approx(4.0 + 3.0 * math.sqrt(4.0 / 9.0))
    assert safe[1, 1] == pytest.approx(9.0 + 3.0 * math.sqrt(9.0 / 4.0))
    positive = np.array([[4.0, 3.0], [3.0, 9.0]])
    assert np.array_equal(safe_covariance_xy(positive), positive)


def test_pose_stamped_is_the_best_hypothesis_with_identity_orientation():
    loc = localization()
    msg = pose_stamped(loc, header(), yaw_variance=9.5)
    msg = deserialize_message(serialize_message(msg), PoseWithCovarianceStamped)
    assert msg.header.frame_id == "map" and msg.header.stamp.sec == 1700000000
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    assert [p.x, p.y, p.z] == [15.0, 15.0, 1.5]
    assert [q.x, q.y, q.z, q.w] == [0.0, 0.0, 0.0, 1.0]
    c = as_matrix(msg.pose.covariance)
    assert np.array_equal(c[:2, :2], loc.covariance_xy) and c[5, 5] == 9.5


def test_result_carries_every_hypothesis_with_its_own_covariance():
    loc = localization()
    msg = result_msg(header(), TEXT, LocalizationResult.STATUS_OK, "", loc, yaw_variance=1.0,
                     latency_ms=12.5)
    msg = deserialize_message(serialize_message(msg), LocalizationResult)
    assert (msg.query == TEXT and msg.status == LocalizationResult.STATUS_OK
            and msg.latency_ms == 12.5)
    assert [h.rank for h in msg.hypotheses] == [0, 1, 2]
    assert [h.cell_id for h in msg.hypotheses] == list(CELLS)
    for h, want in zip(msg.hypotheses, loc.hypotheses):
        c = as_matrix(h.pose.covariance)
        assert c[0, 0] == c[1, 1] == want.covariance_xy[0, 0] and c[5, 5] == 1.0
        assert (h.precision == pytest.approx(want.precision)
                and h.score == pytest.approx(want.score))
    empty = result_msg(header(), "", LocalizationResult.STATUS_EMPTY_QUERY, "the query is empty")
    assert not empty.hypotheses and empty.reason == "the query is empty"


def test_rejection_statuses_map_to_message_constants():
    for text, name in (("", "EMPTY_QUERY"), ("\x01\x02", "NOT_TEXT"),
                       ("x" * 3000, "QUERY_TOO_LONG")):
        with pytest.raises(QueryRejected) as err:
            check_text(text, 2000)
        assert err.value.status == name
        assert status_code(name) == getattr(LocalizationResult, f"STATUS_{name}")
    assert status_code("NO_SUCH_STATUS") == LocalizationResult.STATUS_INTERNAL_ERROR


def test_low_confidence_when_nothing_is_recognised_or_the_ellipse_is_wide():
    assert confidence(localization(), max_sigma_m=20.0) is None
    assert "names a direction and a class" in confidence(localization(recognised=0), 20.0)
    assert "exceeds" in confidence(localization(cov=[[900.0, 0.0], [0.0, 900.0]]), 20.0)


def test_low_confidence_when_little_of_the_text_is_understood_and_the_result_says_what():
    from spatialoc_ros.core.language import LanguageFrontEnd
    from spatialoc_ros.ros.conversions import result_msg

    text = "I'm north of a grey building. A pole is behind me. Nice weather today."
    loc = localization()
    loc.understanding = LanguageFrontEnd().understand(text)
    assert loc.understood == pytest.approx(1 / 3)
    assert "understood 1 of 3 clauses" in confidence(loc, 20.0, min_understood=0.5)
    assert confidence(loc, 20.0, min_understood=0.3) is None
    msg = result_msg(header(), text, LocalizationResult.STATUS_LOW_CONFIDENCE, "x", loc)
    back = deserialize_message(serialize_message(msg), LocalizationResult)
    assert back.understood_share == pytest.approx(1 / 3)
    assert [c.used for c in back.understood] == [True, False, False]
    first = back.understood[0]
    assert (first.hint, first.direction, first.colour, first.label) == (
        "The pose is north of a gray building.", "north", "gray", "building")
    assert "heading" in back.understood[1].reason and back.understood[1].confidence == 0.0
    query = [m for m in localization_markers(loc, CELLS, header()).markers if m.ns == "query"]
    assert "north of gray building" in query[0].text and "understood (33%)" in query[0].text


# --- markers ----------------------------------------------------------------------------------


def test_markers_of_one_answer():
    loc = localization()
    markers = localization_markers(loc, CELLS, header()).markers
    assert markers[0].action == Marker.DELETEALL
    by_ns = {}
    for m in markers[1:]:
        by_ns.setdefault(m.ns, []).append(m)
    # two buildings and a sidewalk are named in the best cell; the pole and the road are not
    assert {ns: len(ms) for ns, ms in by_ns.items()} == {
        "cells": 3, "best": 1, "ellipse": 1, "hinted_objects": 3, "hinted_labels": 3, "query": 1}
    assert len(markers) == 1 + 3 + 1 + 1 + 3 + 3 + 1
    for ms in by_ns.values():
        assert len({m.id for m in ms}) == len(ms), "ids unique within a namespace"
    assert sorted(m.text for m in by_ns["hinted_labels"]) == ["building", "building", "sidewalk"]
    assert by_ns["query"][0].text == TEXT
    assert all(m.header.frame_id == "map" for m in markers)
    boxes = by_ns["cells"]
    assert (boxes[0].color.g > boxes[-1].color.g
            and boxes[0].color.r < boxes[-1].color.r), "best green, worst red"
    assert (boxes[0].pose.position.x, boxes[0].scale.x) == (15.0, 30.0)


def test_ellipse_is_the_one_sigma_ellipse_of_the_covariance():
    major, minor, yaw = ellipse_axes([[9.0, 0.0], [0.0, 4.0]])
    assert ((major, minor) == pytest.approx((6.0, 4.0))
            and math.sin(yaw) == pytest.approx(0.0, abs=1e-9))
    major, minor, yaw = ellipse_axes([[4.0, 0.0], [0.0, 9.0]])
    assert ((major, minor) == pytest.approx((6.0, 4.0))
            and abs(math.cos(yaw)) == pytest.approx(0.0, abs=1e-9))
    ellipse = [m for m in localization_markers(localization(), CELLS, header()).markers
               if m.ns == "ellipse"][0]
    assert ellipse.type == Marker.CYLINDER and ellipse.scale.z < 1.0
    q = ellipse.pose.orientation
    assert q.x == q.y == 0.0 and q.z ** 2 + q.w ** 2 == pytest.approx(1.0)


def test_named_classes_are_whole_words():
    assert named_classes("North of a gray building and a traffic sign.",
                         ["building", "traffic sign", "pole"]) == {"building", "traffic sign"}
    assert named_classes("the buildings", ["building"]) == set()


# --- map cloud --------------------------------------------------------------------------------


def test_point_cloud_layout_matches_create_cloud():
    xyz = np.array([[1.0, 2.0, 3.0], [-4.5, 5.25, 0.0]], np.float32)
    rgb = np.array([[255, 0, 0], [1, 2, 3]], np.uint8)
    msg = deserialize_message(serialize_message(xyzrgb_cloud(header(), xyz, rgb)), PointCloud2)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1),
        ("z", 8, PointField.FLOAT32, 1), ("rgb", 12, PointField.FLOAT32, 1)]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 2, 16, 32)
    assert len(msg.data) == 32 and not msg.is_bigendian
    points = np.frombuffer(bytes(msg.data),
                           dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")])
    assert np.array_equal(np.stack([points["x"], points["y"], points["z"]], 1), xyz)
    assert points["rgb"].tolist() == [0xFF0000, 0x010203]
    assert pack_rgb(rgb).view("<u4").tolist() == [0xFF0000, 0x010203]


def test_map_points_keep_each_point_once_coloured_by_class():
    shared = obj(7, "pole", [0.6, 0.5, 0.1])
    a = cell("0010_00010", 0.0, 0.0, [shared])
    b = cell("0010_00011", 10.0, 0.0,
             [Object3d(7, 7, "pole", shared.xyz - [1 / 3, 0, 0], shared.rgb)])
    xyz, rgb = map_points([a, b], max_points=1000)
    assert len(xyz) == 20, "the same world points in two overlapping cells appear once"
    assert xyz.dtype == np.float32 and rgb.dtype == np.uint8
    assert len({tuple(c) for c in rgb.tolist()}) == 1
    xyz, rgb = map_points(list(CELLS.values()), max_points=30)
    assert len(xyz) == len(rgb) == 30
    assert len(map_points([cell("0010_00012", 0.0, 0.0)], 10)[0]) == 0


# --- query buffering --------------------------------------------------------------------------


def pending(text):
    return PendingQuery(text, None, time.monotonic())


def test_full_queue_drops_the_oldest_and_counts():
    buf = QueryBuffer(3)
    dropped = [buf.push(pending(str(i))) for i in range(5)]
    assert [d.text if d else None for d in dropped] == [None, None, None, "0", "1"]
    assert buf.dropped == 2 and len(buf) == 3
    assert [buf.pop(0).text for _ in range(3)] == ["2", "3", "4"]
    assert buf.pop(timeout=0.01) is None


def test_pop_waits_for_a_push_and_close_wakes_it():
    buf = QueryBuffer(2)
    got = []
    reader = threading.Thread(target=lambda: got.append(buf.pop()))
    reader.start()
    buf.push(pending("a"))
    reader.join(5)
    assert [q.text for q in got] == ["a"]
    reader = threading.Thread(target=lambda: got.append(buf.pop()))
    reader.start()
    buf.close()
    reader.join(5)
    assert not reader.is_alive() and got[-1] is None
    buf.push(pending("b"))
    assert buf.pop() is None and [q.text for q in buf.drain()] == ["b"]
    with pytest.raises(ValueError):
        QueryBuffer(0)


def sentences(text):
    return len([s for s in text.split(".") if s.strip()])


def test_utterances_join_until_silence():
    acc = UtteranceAccumulator(silence_s=1.0, max_sentences=12, max_chars=2000,
                               count_sentences=sentences)
    assert acc.add("The pose is north of a gray building", 0.0) == []
    assert acc.add("  The pose is east of a black pole.  ", 0.5) == []
    assert acc.poll(1.4) is None and acc.pending
    assert acc.poll(1.5) == ("The pose is north of a gray building. "
                             "The pose is east of a black pole.")
    assert not acc.pending and acc.poll(10.0) is None and acc.flush() is None


def test_utterances_close_at_max_sentences_and_before_overflowing():
    acc = UtteranceAccumulator(silence_s=60.0, max_sentences=3, max_chars=60,
                               count_sentences=sentences)
    assert acc.add("One.", 0.0) == [] and acc.add("Two.", 0.1) == []
    assert acc.add("Three.", 0.2) == ["One. Two. Three."]
    assert acc.add("Four. Five.", 0.3) == []
    assert acc.add("Six. Seven.", 0.4) == ["Four. Five."], (
        "would exceed 3 sentences: the first closes")
    assert acc.add("x" * 55, 0.5) == ["Six. Seven."], (
        "would exceed 60 characters: the first closes")
    assert acc.flush() == "x" * 55 + "."


# --- parameter table --------------------------------------------------------------------------


def test_settings_mirror_the_parameter_table():
    defaults = Settings.from_values({})
    assert [p.name for p in PARAMETERS] == list(vars(defaults))
    for p in PARAMETERS:
        assert getattr(defaults, p.name) == p.default and p.description
        if p.range is not None:
            assert p.range[0] <= p.default <= p.range[1]
    assert Settings.from_values({"scenes": ("a",), "top_k": 3}).scenes == ["a"]
    with pytest.raises(KeyError):
        Settings.from_values({"no_such_parameter": 1})


def test_the_answer_probability_travels_and_a_low_one_is_low_confidence():
    loc = localization()
    assert math.isnan(loc.probability)  # no model fitted: never a reason by itself
    assert confidence(loc, 20.0, min_probability=0.5) is None
    for r, h in enumerate(loc.hypotheses):
        h.probability = [0.3, 0.5, 0.2][r] if r < 3 else 0.0
    assert "probability 0.30" in confidence(loc, 20.0, min_probability=0.5)
    assert confidence(loc, 20.0, min_probability=0.25) is None
    msg = result_msg(header(), TEXT, LocalizationResult.STATUS_LOW_CONFIDENCE, "x", loc)
    back = deserialize_message(serialize_message(msg), LocalizationResult)
    assert back.probability == pytest.approx(0.3)
    assert [h.probability for h in back.hypotheses][:3] == pytest.approx([0.3, 0.5, 0.2])
    plain = result_msg(header(), TEXT, LocalizationResult.STATUS_OK, "", localization())
    assert math.isnan(plain.probability) and math.isnan(plain.hypotheses[0].probability)
