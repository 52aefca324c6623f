"""The model worker and its answers without a node: a stand-in model, topics that record.

The messages are the real ROS types (each is serialized, as rclpy would); the
publishers are plain recorders, the clock readings numbers.
"""
import threading
import time
import types

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from rclpy.logging import get_logger
from rclpy.serialization import serialize_message
from visualization_msgs.msg import Marker

from spatialoc_ros.core.query_text import QueryRejected
from spatialoc_ros.data.schema import Cell, Object3d
from spatialoc_ros.inference import Hypothesis, Localization
from spatialoc_ros.msg import LocalizationResult
from spatialoc_ros.ros.diagnostics import QueryStats, localizer_diagnostics
from spatialoc_ros.ros.parameters import Settings
from spatialoc_ros.ros.publishing import Answers, excerpt, one_line
from spatialoc_ros.ros.query_buffer import PendingQuery
from spatialoc_ros.ros.worker import THREAD_NAME, ModelWorker

STAMP = Time(sec=7, nanosec=5)
CELL_ID = "0010_00001"


class Topic:
    """Records what is published on it (what the worker needs of an rclpy publisher)."""

    def __init__(self):
        self.messages = []

    def publish(self, msg):
        serialize_message(msg)  # a message rclpy could send
        self.messages.append(msg)


class StandInModel:
    """Answers from one cell; ``hold`` (an Event) keeps localize() waiting until set."""

    def __init__(self, hold=None):
        points = np.random.default_rng(0).random((50, 3))
        cell = Cell(CELL_ID, "0010", np.array([0.0, 0.0, 0.0, 30.0, 30.0, 30.0]), 30.0,
                    [Object3d(0, 0, "building", points, np.full((50, 3), 0.5, np.float32))])
        self.map = types.SimpleNamespace(cells=[cell], cells_by_id={cell.id: cell})
        self.num_cells, self.device = 1, "cpu"
        self.hold, self.entered = hold, threading.Event()

    def localize(self, text):
        self.entered.set()
        if self.hold is not None:
            self.hold.wait(30)
        if "explode" in text:
            raise RuntimeError("the model broke\nacross two lines")
        if "refuse" in text:
            raise QueryRejected("NOT_TEXT", "not text")
        x = np.nan if "nan" in text else 15.0
        sigma = 100.0 if "vague" in text else 2.0
        hyp = Hypothesis(0, CELL_ID, "0010", 1.0, np.array([x, 15.0, 0.0]), np.eye(2), 4.0)
        return Localization(text, [text], [hyp], np.eye(2) * sigma ** 2, 1)


class Rig:
    """A worker with its answers, topics and counters."""

    def __init__(self, model=None, ros_ok=True, **settings):
        values = dict(queue_size=3, low_confidence_sigma_m=10.0, frame_id="map")
        values.update(settings)
        self.settings = Settings.from_values(values)
        self.model = model or StandInModel()
        self.stats = QueryStats()
        self.result, self.pose, self.markers, self.cloud = Topic(), Topic(), Topic(), Topic()
        self.answers = Answers(self.result, self.stats, get_logger("test_ros_worker"),
                               lambda: "frame_now", lambda: ros_ok)
        self.answers.pose_pub, self.answers.markers_pub = self.pose, self.markers
        self.answers.cloud_pub = self.cloud
        self.state = "inactive"
        self.worker = ModelWorker(self.model, self.settings, self.answers,
                                  lambda: f"the localizer is {self.state}", lambda: STAMP)

    def results(self):
        return [(r.query, r.status) for r in self.result.messages]


def query(text, complete_s=None):
    return PendingQuery(text, STAMP, time.monotonic() if complete_s is None else complete_s)


def test_an_answer_is_pose_result_and_markers_in_the_configured_frame():
    rig = Rig()
    rig.worker.resume()
    rig.worker.answer(query("North of a gray building."))
    (result,) = rig.result.messages
    assert result.status == LocalizationResult.STATUS_OK and result.reason == ""
    assert result.header.frame_id == "map" and result.header.stamp == STAMP
    assert result.latency_ms >= 0 and [h.cell_id for h in result.hypotheses] == [CELL_ID]
    (pose,) = rig.pose.messages
    assert pose.header == result.header and pose.pose.pose.position.x == 15.0
    (markers,) = rig.markers.messages
    assert markers.markers[0].action == Marker.DELETEALL
    assert rig.stats.answered == 1 and rig.stats.low_confidence == 0


@pytest.mark.parametrize("publish_pose", [True, False])
def test_low_confidence_is_flagged_and_its_pose_optional(publish_pose):
    rig = Rig(publish_low_confidence_pose=publish_pose, publish_markers=False)
    rig.worker.resume()
    rig.worker.answer(query("A vague place."))
    (result,) = rig.result.messages
    assert result.status == LocalizationResult.STATUS_LOW_CONFIDENCE
    assert "exceeds low_confidence_sigma_m" in result.reason
    assert len(rig.pose.messages) == int(publish_pose) and not rig.markers.messages
    assert rig.stats.low_confidence == 1


def test_failures_become_results_and_never_escape():
    rig = Rig()
    rig.worker.resume()
    for text in ("Please explode.", "A nan place.", "Please refuse."):
        rig.worker.answer(query(text))
    assert rig.results() == [("Please explode.", LocalizationResult.STATUS_INTERNAL_ERROR),
                             ("A nan place.", LocalizationResult.STATUS_INTERNAL_ERROR),
                             ("Please refuse.", LocalizationResult.STATUS_NOT_TEXT)]
    reasons = [r.reason for r in rig.result.messages]
    assert reasons[0] == "RuntimeError: the model broke across two lines"
    assert reasons[1] == f"the model gave a non-finite position or covariance for cell {CELL_ID}"
    assert all(r.header.frame_id == "frame_now" and not r.hypotheses for r in rig.result.messages)
    assert not rig.pose.messages and rig.stats.errors == 2 and rig.stats.rejected == 1


def test_after_ros_shut_down_a_failure_is_neither_published_nor_counted():
    rig = Rig(ros_ok=False)
    rig.worker.resume()
    rig.worker.answer(query("Please explode."))
    rig.answers.not_ready(query("later"), "shut down")
    assert not rig.result.messages and rig.stats.errors == 0 and rig.stats.not_ready == 1


def test_a_paused_worker_answers_not_ready_with_the_nodes_reason():
    rig = Rig()
    rig.worker.answer(query("North of a building."))
    (result,) = rig.result.messages
    assert result.status == LocalizationResult.STATUS_NOT_READY
    assert result.reason == "the localizer is inactive" and rig.stats.not_ready == 1


def test_take_rejects_bad_text_and_a_full_queue_drops_the_oldest():
    rig = Rig()  # thread not started: queries stay queued
    rig.worker.take(query("   "))
    for i in range(5):
        rig.worker.take(query(f"North of building {i}."))
    assert rig.results() == [("   ", LocalizationResult.STATUS_EMPTY_QUERY),
                             ("North of building 0.", LocalizationResult.STATUS_DROPPED),
                             ("North of building 1.", LocalizationResult.STATUS_DROPPED)]
    assert rig.result.messages[1].reason == (
        "dropped unanswered: the queue of 3 waiting queries was full")
    assert len(rig.worker) == 3 and rig.stats.dropped == 2 and rig.stats.rejected == 1

    rig.worker.pause("the node was deactivated")
    assert [s for _, s in rig.results()[3:]] == [LocalizationResult.STATUS_NOT_READY] * 3
    assert len(rig.worker) == 0 and rig.stats.not_ready == 3


def test_accumulated_utterances_close_on_silence_or_on_pause():
    rig = Rig(accumulate=True, silence_timeout_s=1.0, max_hints=3)
    assert rig.worker.accumulates
    rig.worker.take(query("The pose is west of a black pole", complete_s=10.0))
    rig.worker.take(query("The pose is on-top of a gray road", complete_s=10.5))
    rig.worker.poll(11.0)
    assert len(rig.worker) == 0
    rig.worker.poll(11.5)
    assert len(rig.worker) == 1
    rig.worker.take(query("The pose is south of a pole", complete_s=20.0))
    rig.worker.pause("cleaned up")
    assert rig.results() == [
        ("The pose is west of a black pole. The pose is on-top of a gray road.",
         LocalizationResult.STATUS_NOT_READY),
        ("The pose is south of a pole.", LocalizationResult.STATUS_NOT_READY)]


def test_the_thread_answers_in_order_and_stop_waits_for_the_query_under_way():
    hold = threading.Event()
    rig = Rig(model=StandInModel(hold))
    rig.worker.start()
    rig.worker.resume()
    rig.worker.take(query("First, north of a building."))
    assert rig.model.entered.wait(10)
    assert any(t.name == THREAD_NAME for t in threading.enumerate())
    rig.worker.take(query("Second, waiting."))

    stopper = threading.Thread(target=rig.worker.stop, args=("cleaned up",))
    stopper.start()
    stopper.join(0.3)
    assert stopper.is_alive() and rig.worker.localizer is rig.model, "stop waits for the model"
    hold.set()
    stopper.join(10)
    assert not stopper.is_alive() and rig.worker.localizer is None
    assert sorted(rig.results()) == sorted([
        ("First, north of a building.", LocalizationResult.STATUS_OK),
        ("Second, waiting.", LocalizationResult.STATUS_NOT_READY)])
    assert rig.worker.stop("again") is None  # idempotent


def test_map_cloud_and_detach():
    rig = Rig()
    xyz, rgb = np.zeros((4, 3), np.float32), np.full((4, 3), 200, np.uint8)
    rig.answers.map_cloud(STAMP, "map", (xyz, rgb))
    (cloud,) = rig.cloud.messages
    assert cloud.width == 4 and cloud.header.frame_id == "map"
    assert rig.answers.detach() == [rig.pose, rig.markers, rig.cloud]
    assert rig.answers.detach() == [] and rig.answers.pose_pub is None


def test_diagnostics_follow_the_state():
    stats, settings = QueryStats(received=3), Settings.from_values({"queue_size": 4})
    ok = localizer_diagnostics(STAMP, "n: localizer", "active", True, "", stats, settings,
                               StandInModel(), 2).status[0]
    values = {kv.key: kv.value for kv in ok.values}
    assert ok.message == "answering queries" and ok.hardware_id == "cpu"
    assert values["queue"] == "2/4" and values["model"] == "loaded"
    assert values["queries received"] == "3" and values["state"] == "active"
    failed = localizer_diagnostics(STAMP, "n: localizer", "unconfigured", False, "no map",
                                   stats).status[0]
    assert failed.message == "configure failed: no map" and failed.hardware_id == "none"
    assert {kv.key: kv.value for kv in failed.values}["model"] == "not loaded"
    idle = localizer_diagnostics(STAMP, "n: localizer", "inactive", False, "", stats).status[0]
    assert idle.message == "inactive: not answering queries"
    assert [ok.level, idle.level, failed.level] == [b"\x00", b"\x01", b"\x02"]


def test_log_text_helpers():
    assert excerpt("short") == "'short'" and len(excerpt("x" * 100)) == 50
    assert one_line(ValueError("a\n b")) == "ValueError: a b"
