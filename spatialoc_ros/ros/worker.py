"""The model worker: one thread that answers queued queries with the loaded localizer.

The executor thread hands each query over (:meth:`ModelWorker.take`): the text
is checked, then queued, or joined with the ones before it when the node
accumulates utterances (:mod:`.query_buffer`). The worker thread pops queries
one at a time and answers them (:meth:`ModelWorker.answer`): localize, then
pose, result and markers through :class:`~.publishing.Answers`. Answering never
raises: an unexpected exception becomes an INTERNAL_ERROR result.

The lock guards the model: the worker holds it while it reads the localizer
and runs a query, :meth:`ModelWorker.stop` (cleanup) while it lets the model
go. Between :meth:`ModelWorker.resume` and :meth:`ModelWorker.pause` the
worker answers; otherwise queued queries get NOT_READY.

Plain Python apart from the messages it publishes: tests drive it with a
stand-in localizer, publishers that record, and numbers for clock readings.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

import numpy as np

from ..core.query_text import QueryRejected, check_text
from ..errors import SpatialocError
from .conversions import confidence
from .parameters import Settings
from .publishing import Answers
from .query_buffer import PendingQuery, QueryBuffer, UtteranceAccumulator

THREAD_NAME = "spatialoc_model"


class ModelWorker:
    """Queries in, answers out, on a thread of its own (see module docstring).

    ``not_ready_reason`` says why a query is refused when the worker has been
    paused; ``stamp`` gives the current ROS time (header of accumulated queries
    closed at cleanup).
    """

    def __init__(self, localizer, settings: Settings, answers: Answers,
                 not_ready_reason: Callable[[], str], stamp: Callable[[], Any]):
        self.localizer = localizer
        self.settings = settings
        self.active = False  # answering queries (the node is active)
        self._answers = answers
        self._not_ready_reason = not_ready_reason
        self._stamp = stamp
        self._lock = threading.Lock()  # the worker's query vs. stop (cleanup)
        self._buffer = QueryBuffer(settings.queue_size)
        self._accumulator: Optional[UtteranceAccumulator] = None
        if settings.accumulate:
            from ..networks.text_encoder import split_sentences

            self._accumulator = UtteranceAccumulator(
                settings.silence_timeout_s, settings.max_hints, settings.max_query_chars,
                lambda text: len(split_sentences(text)))
        self._thread = threading.Thread(target=self._work, name=THREAD_NAME, daemon=True)

    def __len__(self) -> int:
        """Queries waiting in the queue."""
        return len(self._buffer)

    @property
    def accumulates(self) -> bool:
        return self._accumulator is not None

    # --- executor thread -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread; it answers once :meth:`resume` is called."""
        self._thread.start()

    def resume(self) -> None:
        """Answer queries (activate)."""
        self.active = True

    def pause(self, reason: str) -> None:
        """Stop answering; every queued and half-accumulated query gets NOT_READY ``reason``."""
        self.active = False
        waiting = self._buffer.drain()
        pending = self._accumulator.flush() if self._accumulator is not None else None
        if pending is not None:
            waiting.append(PendingQuery(pending, self._stamp(), time.monotonic()))
        for query in waiting:
            self._answers.not_ready(query, reason)

    def stop(self, reason: str) -> None:
        """Pause, end the thread and let the model go (cleanup); frees cached CUDA memory."""
        self.pause(reason)
        self._buffer.close()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            device = getattr(self.localizer, "device", None)
            self.localizer = None
        if device is not None and str(device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def take(self, query: PendingQuery) -> None:
        """A query of the active node: rejected, or queued (or joined with the ones before)."""
        try:
            check_text(query.text, self.settings.max_query_chars)
        except QueryRejected as exc:
            self._answers.rejected(query, exc)
            return
        if self._accumulator is None:
            self._enqueue(query)
            return
        for text in self._accumulator.add(query.text, query.complete_s):
            self._enqueue(PendingQuery(text, query.stamp, query.complete_s))

    def poll(self, now_s: Optional[float] = None) -> None:
        """Close an accumulated query after ``silence_timeout_s`` of silence (timer)."""
        now_s = time.monotonic() if now_s is None else now_s
        text = self._accumulator.poll(now_s) if self._accumulator is not None else None
        if text is not None:
            self._enqueue(PendingQuery(text, self._stamp(), now_s))

    def _enqueue(self, query: PendingQuery) -> None:
        """Queue for the thread; a full queue drops its oldest query with a DROPPED result."""
        dropped = self._buffer.push(query)
        if dropped is not None:
            self._answers.dropped(dropped, self._buffer.size, self._buffer.dropped)

    # --- worker thread ---------------------------------------------------------------------------

    def _work(self) -> None:
        """Answer queued queries until the buffer is closed."""
        while True:
            query = self._buffer.pop()
            if query is None:
                return
            self.answer(query)

    def answer(self, query: PendingQuery) -> None:
        """Localize one query and publish pose, result and markers; never raises."""
        try:
            with self._lock:
                settings, localizer = self.settings, self.localizer
                if not self.active or localizer is None:
                    self._answers.not_ready(query, self._not_ready_reason())
                    return
                loc = localizer.localize(query.text)
            if not (np.isfinite(loc.best.position).all() and np.isfinite(loc.covariance_xy).all()):
                raise SpatialocError(f"the model gave a non-finite position or covariance for "
                                     f"cell {loc.best.cell_id}")
            doubt = confidence(loc, settings.low_confidence_sigma_m, settings.min_understood,
                               settings.min_probability)
            self._answers.localized(query, loc, doubt, settings, localizer.map.cells_by_id)
        except QueryRejected as exc:
            self._answers.rejected(query, exc)
        except Exception as exc:  # the node outlives any query
            self._answers.failed(query, exc)
