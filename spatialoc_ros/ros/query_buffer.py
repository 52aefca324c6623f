"""Queries between the subscription and the model: a bounded queue and utterance joining.

Speech arrives faster than the model answers in bursts, so the node keeps a
:class:`QueryBuffer` of bounded length: when it is full the *oldest* waiting
query is dropped (and counted, and answered with a DROPPED result by the node),
never unbounded memory. Speech-to-text nodes often publish one utterance per
message; :class:`UtteranceAccumulator` joins consecutive messages into one query
that closes after a silence or once enough sentences have arrived.

Plain Python (no ROS): the node passes in clock readings, tests pass in numbers.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, List, Optional


@dataclass
class PendingQuery:
    """A complete query waiting for the model."""

    text: str
    stamp: Any  # the ROS time the query was complete (header stamp of its answers)
    complete_s: float  # time.monotonic() at that moment: latency is measured from here


class QueryBuffer:
    """A thread-safe FIFO of at most ``size`` queries; pushing into a full one drops the oldest."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"queue size must be at least 1, got {size}")
        self.size = size
        self.dropped = 0  # queries dropped so far
        self._items: Deque[PendingQuery] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def push(self, query: PendingQuery) -> Optional[PendingQuery]:
        """Queue ``query``; returns the query dropped to make room, if any."""
        with self._cond:
            dropped = None
            if len(self._items) >= self.size:
                dropped = self._items.popleft()
                self.dropped += 1
            self._items.append(query)
            self._cond.notify()
            return dropped

    def pop(self, timeout: Optional[float] = None) -> Optional[PendingQuery]:
        """The oldest query; waits up to ``timeout`` s; None when none came or the buffer is
        closed."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items and not self._closed else None

    def drain(self) -> List[PendingQuery]:
        """Remove and return every waiting query (oldest first)."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items

    def close(self) -> None:
        """Wake every waiting :meth:`pop`; later pops return None at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class UtteranceAccumulator:
    """Joins the sentences of consecutive messages into one query.

    A query closes when ``silence_s`` pass without a new message (:meth:`poll`),
    or as soon as it holds ``max_sentences`` sentences. A message that would
    push the query past ``max_sentences`` or ``max_chars`` closes the query
    before it and starts the next one, so no joined query is refused for
    length that was fine in pieces. ``count_sentences`` is the same sentence
    splitter the model uses. Speech-to-text output often lacks the final
    period; each message is joined as a sentence of its own, so one is added.
    """

    silence_s: float
    max_sentences: int
    max_chars: int
    count_sentences: Any  # callable: text -> number of sentences
    _parts: List[str] = field(default_factory=list)
    _sentences: int = 0
    _last_s: float = 0.0

    @property
    def pending(self) -> bool:
        return bool(self._parts)

    def add(self, text: str, now_s: float) -> List[str]:
        """Take one message at time ``now_s``; returns the queries it closed (0, 1 or 2)."""
        text = _terminated(text.strip())
        n = self.count_sentences(text)
        closed = []
        if self._parts and (self._sentences + n > self.max_sentences
                            or len(self._joined()) + 1 + len(text) > self.max_chars):
            closed.append(self._close())
        self._parts.append(text)
        self._sentences += n
        self._last_s = now_s
        if self._sentences >= self.max_sentences:
            closed.append(self._close())
        return closed

    def poll(self, now_s: float) -> Optional[str]:
        """The pending query if it has been silent for ``silence_s``, else None."""
        if self._parts and now_s - self._last_s >= self.silence_s:
            return self._close()
        return None

    def flush(self) -> Optional[str]:
        """The pending query, closed now whatever the time (None if there is none)."""
        return self._close() if self._parts else None

    def _joined(self) -> str:
        return " ".join(self._parts)

    def _close(self) -> str:
        text = self._joined()
        self._parts, self._sentences = [], 0
        return text


def _terminated(text: str) -> str:
    """``text`` ending in a sentence terminator, so joined messages stay separate sentences."""
    return text if not text or text[-1] in ".!?" else text + "."
