"""The managed node ``spatialoc_localizer``: text in, pose, result and markers out.

Lifecycle (``rclpy.lifecycle``, the pattern of ros2/demos ``lifecycle_py``):

- *unconfigured* / *inactive*: subscribed to ``query`` already, so every query
  gets its answer, a NOT_READY result; ``result`` and ``/diagnostics`` are
  published in every state;
- **configure** reads the parameters and loads the
  :class:`~spatialoc_ros.inference.Localizer` (map + weights), the map cloud,
  the lifecycle publishers (``pose``, ``markers``, ``map_cloud``) and the model
  worker; a missing or wrong map or weights file fails the transition with one
  log line naming it, and the node stays unconfigured (and says why in
  diagnostics and NOT_READY results);
- **activate** publishes the map cloud (latched) and starts answering;
- **deactivate** stops answering (waiting queries get NOT_READY);
- **cleanup** / **shutdown** stop the worker and free the model.

With ``autostart`` (default) the node configures and activates itself.

The node class only wires the parts: :mod:`.worker` (the model thread, its
lock and the query queue), :mod:`.publishing` (answers and their messages),
:mod:`.diagnostics` (the ``/diagnostics`` status).

Threads: the executor thread receives queries and hands them to the worker,
which checks the text and queues it (:mod:`.query_buffer`); one worker thread
runs the model, so queries that arrive meanwhile are counted, queued, or
dropped oldest-first with a DROPPED result. Transitions run on the executor
thread too: while configure loads the model, queries wait in the subscription
(depth 10) and are handled once it is done. No query exception escapes: an
unexpected one becomes an INTERNAL_ERROR result.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import replace
from typing import Optional

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from spatialoc_ros.msg import LocalizationResult

from .declarations import declare_parameters, read_settings
from .diagnostics import QueryStats, localizer_diagnostics
from .map_cloud import map_points
from .parameters import PARAMETERS_BY_NAME, Settings
from .publishing import Answers, one_line
from .query_buffer import PendingQuery
from .worker import ModelWorker

NODE_NAME = "spatialoc_localizer"

QUERY_QOS = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST,
                       reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.VOLATILE)
LATCHED_QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
RESULT_QOS = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST,
                        reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL)
ACCUMULATOR_POLL_S = 0.05


class LocalizerNode(LifecycleNode):
    """Localizes text queries in a map (see module docstring)."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        declare_parameters(self)
        self.stats = QueryStats()
        self.settings: Optional[Settings] = None
        self.load_error = ""  # why the last configure failed
        self.state_label = "unconfigured"
        self._worker: Optional[ModelWorker] = None  # from configure to cleanup
        self._accumulator_timer = None
        self._cloud = None  # (xyz, rgb) of the map, published on activate

        result_pub = self.create_publisher(LocalizationResult, "result", RESULT_QOS)
        self._answers = Answers(result_pub, self.stats, self.get_logger(), self._frame_id,
                                self.context.ok)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._query_sub = self.create_subscription(String, "query", self._on_query, QUERY_QOS)
        self.create_timer(self.get_parameter("diagnostics_period_s").value,
                          self._publish_diagnostics)
        self._autostart_timer = None
        if self.get_parameter("autostart").value:
            self._autostart_timer = self.create_timer(0.01, self._autostart)

    @property
    def localizer(self):
        """The loaded model from configure to cleanup, else None."""
        return self._worker.localizer if self._worker is not None else None

    @property
    def _active(self) -> bool:
        return self._worker is not None and self._worker.active

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
            localizer = Localizer(settings.map_path, settings.weights_dir,
                                  scenes=settings.scenes or None, device=settings.device,
                                  cache=settings.cache_dir or None, top_k=settings.top_k,
                                  max_chars=settings.max_query_chars,
                                  max_hints=settings.max_hints, retriever=settings.retriever,
                                  retriever_options=({"shortlist": settings.shortlist}
                                                     if settings.retriever != "exhaustive"
                                                     else None),
                                  cell_rows=settings.cell_rows)
            settings = self._map_frame(settings, localizer.map)
            cloud = (map_points(localizer.map.cells, settings.map_cloud_max_points)
                     if settings.publish_map_cloud else None)
        except Exception as exc:  # any failure to load must leave the node alive and say why
            self.load_error = one_line(exc)
            self.get_logger().error(f"configure failed: {self.load_error}")
            self.get_logger().debug(traceback.format_exc())
            return TransitionCallbackReturn.FAILURE

        self.settings, self._cloud, self.load_error = settings, cloud, ""
        answers = self._answers
        answers.pose_pub = self.create_lifecycle_publisher(PoseWithCovarianceStamped, "pose",
                                                           LATCHED_QOS)
        answers.markers_pub = self.create_lifecycle_publisher(MarkerArray, "markers", LATCHED_QOS)
        answers.cloud_pub = self.create_lifecycle_publisher(PointCloud2, "map_cloud", LATCHED_QOS)
        self._worker = ModelWorker(localizer, settings, answers, self._not_ready_reason,
                                   self._now)
        if self._worker.accumulates:
            self._accumulator_timer = self.create_timer(ACCUMULATOR_POLL_S, self._worker.poll)
        self._worker.start()
        self.state_label = "inactive"
        self.get_logger().info(f"configured in {time.monotonic() - start:.1f} s: "
                               f"{localizer.num_cells} cells, device {localizer.device}, "
                               f"top_k {settings.top_k}")
        return super().on_configure(state)

    def _map_frame(self, settings: Settings, source) -> Settings:
        """A built map publishes in the frame it was built for; the parameter names the frame
        of maps that carry none (KITTI360Pose folders)."""
        from ..core.map_source import BuiltMap

        if not isinstance(source, BuiltMap) or source.frame_id == settings.frame_id:
            return settings
        if settings.frame_id != PARAMETERS_BY_NAME["frame_id"].default:
            self.get_logger().warning(f"frame_id {settings.frame_id!r} is ignored: the map "
                                      f"{settings.map_path} was built in frame "
                                      f"{source.frame_id!r}")
        return replace(settings, frame_id=source.frame_id)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Enable the publishers, publish the map cloud, answer queries. -> active."""
        result = super().on_activate(state)
        if self._cloud is not None:
            self._answers.map_cloud(self._now(), self.settings.frame_id, self._cloud)
        self._worker.resume()
        self.state_label = "active"
        self.get_logger().info(f"active: answering queries on {self._query_sub.topic_name}")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop answering; waiting queries get NOT_READY. -> inactive."""
        self.state_label = "inactive"
        self._worker.pause("the node was deactivated before the query was answered")
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
        """Stop answering and the worker; free model, map, lifecycle publishers (idempotent)."""
        if self._accumulator_timer is not None:
            self.destroy_timer(self._accumulator_timer)
        self._accumulator_timer = None
        if self._worker is not None:
            self._worker.stop("the node was cleaned up before the query was answered")
        self._worker = None
        self.settings = self._cloud = None
        for pub in self._answers.detach():
            self.destroy_lifecycle_publisher(pub)
        self.state_label = "unconfigured"

    # --- queries in, state out ----------------------------------------------------------------

    def _on_query(self, msg: String) -> None:
        """Executor thread: NOT_READY unless active, else the worker takes the query."""
        query = PendingQuery(msg.data, self._now(), time.monotonic())
        self.stats.add("received")
        if self._active:
            self._worker.take(query)
        else:
            self._answers.not_ready(query, self._not_ready_reason())

    def _not_ready_reason(self) -> str:
        if self.load_error:
            return f"the localizer is {self.state_label}: configure failed: {self.load_error}"
        return f"the localizer is {self.state_label}, not active"

    def _frame_id(self) -> str:
        """The frame of results: the configured one, else the parameter's current value."""
        if self.settings is not None:
            return self.settings.frame_id
        return self.get_parameter("frame_id").value

    def _now(self):
        """The current ROS time as a message (header stamps)."""
        return self.get_clock().now().to_msg()

    def _publish_diagnostics(self) -> None:
        """Executor thread, every ``diagnostics_period_s``: state, model and counters."""
        worker = self._worker
        self._diagnostics_pub.publish(localizer_diagnostics(
            self._now(), f"{self.get_name()}: localizer", self.state_label, self._active,
            self.load_error, self.stats, self.settings, self.localizer,
            len(worker) if worker is not None else 0))
