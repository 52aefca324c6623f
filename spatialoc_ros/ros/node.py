"""The managed node ``spatialoc_localizer``: text in, pose, result and markers out.

Lifecycle (``rclpy.lifecycle``, the pattern of ros2/demos ``lifecycle_py``):

- *unconfigured* / *inactive*: subscribed to ``query`` already, so every query
  gets its answer, a NOT_READY result; ``result`` and ``/diagnostics`` are
  published in every state;
- **configure** reads the parameters and loads the :class:`~spatialoc_ros.inference.Localizer`
  (map + weights), the map cloud, the lifecycle publishers (``pose``,
  ``markers``, ``map_cloud``) and the model worker; a missing or wrong map or
  weights file fails the transition with one log line naming it, and the node
  stays unconfigured (and says why in diagnostics and NOT_READY results);
- **activate** publishes the map cloud (latched) and starts answering;
- **deactivate** stops answering (waiting queries get NOT_READY);
- **cleanup** / **shutdown** stop the worker and free the model.

With ``autostart`` (default) the node configures and activates itself.

Threads: the executor thread receives queries, checks the text and queues it
(:mod:`.query_buffer`); one worker thread runs the model, so queries that
arrive meanwhile are counted, queued, or dropped oldest-first with a DROPPED
result. Transitions run on the executor thread too: while configure loads the
model, queries wait in the subscription (depth 10) and are handled once it is
done. No query exception escapes: an unexpected one becomes an INTERNAL_ERROR
result.
"""
from __future__ import annotations

import threading
import time
import traceback
from typing import Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header, String
from visualization_msgs.msg import MarkerArray

from spatialoc_ros.msg import LocalizationResult

from ..errors import SpatialocError
from ..core.query_text import QueryRejected, check_text
from .conversions import confidence, pose_stamped, result_msg, status_code
from .declarations import declare_parameters, read_settings
from .diagnostics import QueryStats, diagnostic_array
from .map_cloud import map_points, xyzrgb_cloud
from .markers import localization_markers
from .parameters import Settings
from .query_buffer import PendingQuery, QueryBuffer, UtteranceAccumulator

NODE_NAME = "spatialoc_localizer"

QUERY_QOS = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.VOLATILE)
LATCHED_QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
RESULT_QOS = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL)
ACCUMULATOR_POLL_S = 0.05


def excerpt(text: str, limit: int = 48) -> str:
    """The start of a query for a log line, quoted."""
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


def one_line(exc: BaseException) -> str:
    """An exception as one log line: our errors as they are, others with their type."""
    text = " ".join(str(exc).split())
    return text if isinstance(exc, SpatialocError) and text else f"{type(exc).__name__}: {text}"


class LocalizerNode(LifecycleNode):
    """Localizes text queries in a map (see module docstring)."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        declare_parameters(self)
        self.stats = QueryStats()
        self.settings: Optional[Settings] = None
        self.localizer = None
        self.load_error = ""  # why the last configure failed
        self.state_label = "unconfigured"
        self._active = False
        self._model_lock = threading.Lock()  # the worker's query vs. cleanup
        self._buffer: Optional[QueryBuffer] = None
        self._worker: Optional[threading.Thread] = None
        self._accumulator: Optional[UtteranceAccumulator] = None
        self._accumulator_timer = None
        self._cloud = None  # (xyz, rgb) of the map, published on activate
        self._pose_pub = self._markers_pub = self._cloud_pub = None

        self._result_pub = self.create_publisher(LocalizationResult, "result", RESULT_QOS)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._query_sub = self.create_subscription(String, "query", self._on_query, QUERY_QOS)
        self.create_timer(self.get_parameter("diagnostics_period_s").value, self._publish_diagnostics)
        self._autostart_timer = None
        if self.get_parameter("autostart").value:
            self._autostart_timer = self.create_timer(0.01, self._autostart)

    # --- lifecycle ---------------------------------------------------------------------------

    def _autostart(self) -> None:
        """Configure and activate once, right after the executor starts (``autostart``)."""
        self._autostart_timer.cancel()
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load map and weights. SUCCESS -> inactive; FAILURE (one log line) -> unconfigured."""
        from ..inference import Localizer

        start = time.monotonic()
        try:
            settings = read_settings(self)
            self.get_logger().info(f"loading map {settings.map_path} "
                                   f"({', '.join(settings.scenes) or 'all scenes'}) with weights "
                                   f"{settings.weights_dir} on device {settings.device}")
            localizer = Localizer(settings.map_path, settings.weights_dir, scenes=settings.scenes or None,
                                  device=settings.device, cache=settings.cache_dir or None,
                                  top_k=settings.top_k, max_chars=settings.max_query_chars,
                                  max_hints=settings.max_hints)
            cloud = (map_points(localizer.map.cells, settings.map_cloud_max_points)
                     if settings.publish_map_cloud else None)
        except Exception as exc:  # any failure to load must leave the node alive and say why
            self.load_error = one_line(exc)
            self.get_logger().error(f"configure failed: {self.load_error}")
            self.get_logger().debug(traceback.format_exc())
            return TransitionCallbackReturn.FAILURE

        self.settings, self.localizer, self._cloud, self.load_error = settings, localizer, cloud, ""
        self._pose_pub = self.create_lifecycle_publisher(PoseWithCovarianceStamped, "pose", LATCHED_QOS)
        self._markers_pub = self.create_lifecycle_publisher(MarkerArray, "markers", LATCHED_QOS)
        self._cloud_pub = self.create_lifecycle_publisher(PointCloud2, "map_cloud", LATCHED_QOS)
        self._buffer = QueryBuffer(settings.queue_size)
        if settings.accumulate:
            from ..networks.text_encoder import split_sentences

            self._accumulator = UtteranceAccumulator(settings.silence_timeout_s, settings.max_hints,
                                                     settings.max_query_chars,
                                                     lambda text: len(split_sentences(text)))
            self._accumulator_timer = self.create_timer(ACCUMULATOR_POLL_S, self._poll_accumulator)
        self._worker = threading.Thread(target=self._work, args=(self._buffer,), name="spatialoc_model",
                                        daemon=True)
        self._worker.start()
        self.state_label = "inactive"
        self.get_logger().info(f"configured in {time.monotonic() - start:.1f} s: {localizer.num_cells} cells, "
                               f"device {localizer.device}, top_k {settings.top_k}")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Enable the publishers, publish the map cloud, answer queries. -> active."""
        result = super().on_activate(state)
        if self._cloud is not None:
            header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.settings.frame_id)
            self._cloud_pub.publish(xyzrgb_cloud(header, *self._cloud))
        self._active = True
        self.state_label = "active"
        self.get_logger().info(f"active: answering queries on {self._query_sub.topic_name}")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop answering; waiting queries get NOT_READY. -> inactive."""
        self._active = False
        self.state_label = "inactive"
        self._refuse_waiting("the node was deactivated before the query was answered")
        self.get_logger().info("inactive: queries are answered NOT_READY")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop the worker, free the model and the publishers. -> unconfigured."""
        self.release()
        self.get_logger().info("cleaned up: model and map released")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free everything, from any state. -> finalized."""
        self.release()
        self.state_label = "finalized"
        return super().on_shutdown(state)

    def release(self) -> None:
        """Stop answering, stop the worker, free model, map and lifecycle publishers (idempotent)."""
        self._active = False
        if self._accumulator_timer is not None:
            self.destroy_timer(self._accumulator_timer)
        self._accumulator_timer = None
        self._refuse_waiting("the node was cleaned up before the query was answered")
        if self._buffer is not None:
            self._buffer.close()
        if self._worker is not None:
            self._worker.join()
        self._buffer = self._worker = self._accumulator = None
        with self._model_lock:
            device = getattr(self.localizer, "device", None)
            self.localizer = self.settings = self._cloud = None
        for pub in (self._pose_pub, self._markers_pub, self._cloud_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._pose_pub = self._markers_pub = self._cloud_pub = None
        if device is not None and str(device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
        self.state_label = "unconfigured"

    # --- queries in ---------------------------------------------------------------------------

    def _on_query(self, msg: String) -> None:
        """Executor thread: answer NOT_READY or a rejection at once, else queue (or accumulate)."""
        stamp, now_s = self.get_clock().now().to_msg(), time.monotonic()
        self.stats.add("received")
        if not self._active:
            self._refuse(PendingQuery(msg.data, stamp, now_s), self._not_ready_reason())
            return
        try:
            check_text(msg.data, self.settings.max_query_chars)
        except QueryRejected as exc:
            self._publish_rejection(PendingQuery(msg.data, stamp, now_s), exc)
            return
        if self._accumulator is None:
            self._enqueue(PendingQuery(msg.data, stamp, now_s))
            return
        for text in self._accumulator.add(msg.data, now_s):
            self._enqueue(PendingQuery(text, stamp, now_s))

    def _poll_accumulator(self) -> None:
        """Executor thread: close an accumulated query after ``silence_timeout_s`` of silence."""
        now_s = time.monotonic()
        text = self._accumulator.poll(now_s) if self._accumulator is not None else None
        if text is not None:
            self._enqueue(PendingQuery(text, self.get_clock().now().to_msg(), now_s))

    def _enqueue(self, query: PendingQuery) -> None:
        """Queue for the worker; a full queue drops its oldest query with a DROPPED result."""
        dropped = self._buffer.push(query)
        if dropped is None:
            return
        self.stats.add("dropped")
        self.get_logger().warning(f"queries arrive faster than they are answered: dropped the oldest "
                                  f"waiting query (queue_size {self._buffer.size}, "
                                  f"{self._buffer.dropped} dropped so far)", throttle_duration_sec=1.0)
        self._publish_result(dropped, LocalizationResult.STATUS_DROPPED,
                             f"dropped unanswered: the queue of {self._buffer.size} waiting queries was full")

    def _refuse_waiting(self, reason: str) -> None:
        """NOT_READY for every queued and half-accumulated query."""
        waiting = self._buffer.drain() if self._buffer is not None else []
        pending = self._accumulator.flush() if self._accumulator is not None else None
        if pending is not None:
            waiting.append(PendingQuery(pending, self.get_clock().now().to_msg(), time.monotonic()))
        for query in waiting:
            self._refuse(query, reason)

    def _not_ready_reason(self) -> str:
        if self.load_error:
            return f"the localizer is {self.state_label}: configure failed: {self.load_error}"
        return f"the localizer is {self.state_label}, not active"

    # --- the model worker ----------------------------------------------------------------------

    def _work(self, buffer: QueryBuffer) -> None:
        """Worker thread: answer queued queries until the buffer is closed."""
        while True:
            query = buffer.pop()
            if query is None:
                return
            self._answer(query)

    def _answer(self, query: PendingQuery) -> None:
        """Localize one query and publish pose, result and markers; never raises."""
        try:
            with self._model_lock:
                settings, localizer = self.settings, self.localizer
                if not self._active or localizer is None:
                    self._refuse(query, self._not_ready_reason())
                    return
                loc = localizer.localize(query.text)
            best = loc.best.position
            if not (np.isfinite(best).all() and np.isfinite(loc.covariance_xy).all()):
                raise SpatialocError(f"the model gave a non-finite position or covariance for cell "
                                     f"{loc.best.cell_id}")
            doubt = confidence(loc, settings.low_confidence_sigma_m)
            header = Header(stamp=query.stamp, frame_id=settings.frame_id)
            latency_ms = 1e3 * (time.monotonic() - query.complete_s)
            if doubt is None or settings.publish_low_confidence_pose:
                self._pose_pub.publish(pose_stamped(loc, header, settings.yaw_variance))
            status = LocalizationResult.STATUS_OK if doubt is None else LocalizationResult.STATUS_LOW_CONFIDENCE
            self._result_pub.publish(result_msg(header, query.text, status, doubt or "", loc,
                                                settings.yaw_variance, latency_ms))
            if settings.publish_markers:
                self._markers_pub.publish(localization_markers(loc, localizer.map.cells_by_id, header))
            self.stats.answered_in(latency_ms, doubt is not None)
            self.get_logger().info(
                f"answered {excerpt(query.text)} in {latency_ms:.0f} ms: x {best[0]:.1f} y {best[1]:.1f} m, "
                f"1-sigma {loc.sigma_m:.1f} m, cell {loc.best.cell_id}"
                + (f" (LOW_CONFIDENCE: {doubt})" if doubt else ""))
        except QueryRejected as exc:
            self._publish_rejection(query, exc)
        except Exception as exc:  # the node outlives any query
            if not self.context.ok():  # shutting down: publishing fails, nobody listens
                return
            self.stats.add("errors")
            self.get_logger().error(f"query failed: {one_line(exc)}")
            self.get_logger().debug(traceback.format_exc())
            self._publish_result(query, LocalizationResult.STATUS_INTERNAL_ERROR, one_line(exc))

    # --- answers out -------------------------------------------------------------------------------

    def _publish_result(self, query: PendingQuery, status: int, reason: str) -> None:
        """A result without hypotheses (and no pose) for ``query``; nothing once ROS is shut down."""
        if not self.context.ok():
            return
        frame = self.settings.frame_id if self.settings is not None else self.get_parameter("frame_id").value
        header = Header(stamp=query.stamp, frame_id=frame)
        latency_ms = 1e3 * (time.monotonic() - query.complete_s)
        self._result_pub.publish(result_msg(header, query.text, status, reason, latency_ms=latency_ms))

    def _publish_rejection(self, query: PendingQuery, exc: QueryRejected) -> None:
        self.stats.add("rejected")
        self.get_logger().warning(f"query rejected ({exc.status}): {exc.reason}")
        self._publish_result(query, status_code(exc.status), exc.reason)

    def _refuse(self, query: PendingQuery, reason: str) -> None:
        self.stats.add("not_ready")
        self.get_logger().warning(f"query not answered (NOT_READY): {reason}", throttle_duration_sec=1.0)
        self._publish_result(query, LocalizationResult.STATUS_NOT_READY, reason)

    def _publish_diagnostics(self) -> None:
        """Executor thread, every ``diagnostics_period_s``: state, model and counters."""
        settings, localizer, buffer = self.settings, self.localizer, self._buffer
        if self._active:
            level, message = DiagnosticStatus.OK, "answering queries"
        elif self.load_error:
            level, message = DiagnosticStatus.ERROR, f"configure failed: {self.load_error}"
        else:
            level, message = DiagnosticStatus.WARN, f"{self.state_label}: not answering queries"
        values = {"state": self.state_label}
        if settings is not None and localizer is not None:
            values.update({"map": settings.map_path, "scenes": ", ".join(settings.scenes) or "all",
                           "map cells": localizer.num_cells, "weights": settings.weights_dir,
                           "model": "loaded", "device": str(localizer.device),
                           "queue": f"{len(buffer) if buffer else 0}/{settings.queue_size}"})
        else:
            values["model"] = "not loaded"
        values.update(self.stats.snapshot())
        hardware = str(localizer.device) if localizer is not None else "none"
        self._diagnostics_pub.publish(diagnostic_array(self.get_clock().now().to_msg(),
                                                       f"{self.get_name()}: localizer", hardware, level,
                                                       message, values))
