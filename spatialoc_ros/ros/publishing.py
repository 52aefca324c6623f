"""What the node says back about a query: the answer messages, their counters and log lines.

Every query gets exactly one ``LocalizationResult``: a localization (OK or
LOW_CONFIDENCE, with the pose and markers), or a status without hypotheses and
no pose: a rejection of the text, NOT_READY, DROPPED or INTERNAL_ERROR. The
:class:`Answers` object holds the publishers (the node creates them: ``result``
at start-up, ``pose``, ``markers`` and ``map_cloud`` on configure), builds the
messages with :mod:`.conversions`, :mod:`.markers` and :mod:`.map_cloud`, and
counts each outcome in the node's :class:`~.diagnostics.QueryStats`.

Called from the executor thread and the model worker alike; publishers and
the counters are thread-safe. Once ROS is shut down nothing is published.
"""
from __future__ import annotations

import time
import traceback
from typing import Any, Callable, List, Optional

from std_msgs.msg import Header

from spatialoc_ros.msg import LocalizationResult

from ..core.query_text import QueryRejected
from ..errors import SpatialocError
from .conversions import pose_stamped, result_msg, status_code
from .diagnostics import QueryStats
from .map_cloud import xyzrgb_cloud
from .markers import localization_markers
from .parameters import Settings
from .query_buffer import PendingQuery


def excerpt(text: str, limit: int = 48) -> str:
    """The start of a query for a log line, quoted."""
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


def one_line(exc: BaseException) -> str:
    """An exception as one log line: our errors as they are, others with their type."""
    text = " ".join(str(exc).split())
    if isinstance(exc, SpatialocError) and text:
        return text
    return f"{type(exc).__name__}: {text}"


class Answers:
    """The publishers of answers and the messages on them (see module docstring).

    ``result_pub`` is always there; ``pose_pub``, ``markers_pub`` and
    ``cloud_pub`` are set between configure and cleanup. ``frame_id`` gives the
    frame of results without hypotheses (the node's current setting), ``ros_ok``
    whether ROS still runs.
    """

    def __init__(self, result_pub, stats: QueryStats, logger, frame_id: Callable[[], str],
                 ros_ok: Callable[[], bool]):
        self.result_pub = result_pub
        self.pose_pub = self.markers_pub = self.cloud_pub = None
        self.stats = stats
        self._logger = logger
        self._frame_id = frame_id
        self._ros_ok = ros_ok

    def detach(self) -> List[Any]:
        """Forget the lifecycle publishers; returns those that were set, to be destroyed."""
        pubs = [p for p in (self.pose_pub, self.markers_pub, self.cloud_pub) if p is not None]
        self.pose_pub = self.markers_pub = self.cloud_pub = None
        return pubs

    def map_cloud(self, stamp, frame_id: str, cloud) -> None:
        """The map's points, ``cloud`` = (xyz, rgb), on ``map_cloud``."""
        header = Header(stamp=stamp, frame_id=frame_id)
        self.cloud_pub.publish(xyzrgb_cloud(header, *cloud))

    def localized(self, query: PendingQuery, loc, doubt: Optional[str], settings: Settings,
                  cells_by_id) -> None:
        """Pose, result and markers of a localization; ``doubt`` makes it LOW_CONFIDENCE."""
        header = Header(stamp=query.stamp, frame_id=settings.frame_id)
        latency_ms = 1e3 * (time.monotonic() - query.complete_s)
        if doubt is None or settings.publish_low_confidence_pose:
            self.pose_pub.publish(pose_stamped(loc, header, settings.yaw_variance))
        status = (LocalizationResult.STATUS_OK if doubt is None
                  else LocalizationResult.STATUS_LOW_CONFIDENCE)
        self.result_pub.publish(result_msg(header, query.text, status, doubt or "", loc,
                                           settings.yaw_variance, latency_ms))
        if settings.publish_markers:
            self.markers_pub.publish(localization_markers(loc, cells_by_id, header))
        self.stats.answered_in(latency_ms, doubt is not None)
        best = loc.best.position
        self._logger.info(
            f"answered {excerpt(query.text)} in {latency_ms:.0f} ms: "
            f"x {best[0]:.1f} y {best[1]:.1f} m, "
            f"1-sigma {loc.sigma_m:.1f} m, cell {loc.best.cell_id}"
            + (f" (LOW_CONFIDENCE: {doubt})" if doubt else ""))

    def rejected(self, query: PendingQuery, exc: QueryRejected) -> None:
        """EMPTY_QUERY, NOT_TEXT or QUERY_TOO_LONG: the text is not a query."""
        self.stats.add("rejected")
        self._logger.warning(f"query rejected ({exc.status}): {exc.reason}")
        self.status_only(query, status_code(exc.status), exc.reason)

    def not_ready(self, query: PendingQuery, reason: str) -> None:
        """NOT_READY: the node is not active (``reason`` says why)."""
        self.stats.add("not_ready")
        self._logger.warning(f"query not answered (NOT_READY): {reason}",
                             throttle_duration_sec=1.0)
        self.status_only(query, LocalizationResult.STATUS_NOT_READY, reason)

    def dropped(self, query: PendingQuery, queue_size: int, dropped_so_far: int) -> None:
        """DROPPED: a full queue of ``queue_size`` pushed ``query`` out unanswered."""
        self.stats.add("dropped")
        self._logger.warning(f"queries arrive faster than they are answered: dropped the oldest "
                             f"waiting query (queue_size {queue_size}, "
                             f"{dropped_so_far} dropped so far)", throttle_duration_sec=1.0)
        self.status_only(query, LocalizationResult.STATUS_DROPPED,
                         f"dropped unanswered: the queue of {queue_size} waiting queries was full")

    def failed(self, query: PendingQuery, exc: Exception) -> None:
        """INTERNAL_ERROR: answering raised ``exc``; once ROS is down, nothing (uncounted)."""
        if not self._ros_ok():  # shutting down: publishing fails, nobody listens
            return
        self.stats.add("errors")
        self._logger.error(f"query failed: {one_line(exc)}")
        self._logger.debug(traceback.format_exc())
        self.status_only(query, LocalizationResult.STATUS_INTERNAL_ERROR, one_line(exc))

    def status_only(self, query: PendingQuery, status: int, reason: str) -> None:
        """A result without hypotheses (and no pose) for ``query``; nothing once ROS is down."""
        if not self._ros_ok():
            return
        header = Header(stamp=query.stamp, frame_id=self._frame_id())
        latency_ms = 1e3 * (time.monotonic() - query.complete_s)
        self.result_pub.publish(result_msg(header, query.text, status, reason,
                                           latency_ms=latency_ms))
