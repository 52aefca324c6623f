"""What the node reports on ``/diagnostics``: model state and query counters.

One ``DiagnosticStatus`` per period, named like diagnostic_updater's tasks
(``<node name>: localizer``): level OK while answering, WARN while not active,
ERROR after a failed configure (its message is the reason); key/values give the
map, the weights, the device, the last latency and how many queries were
answered, low-confidence, rejected, dropped, refused as not ready or failed.
:func:`localizer_diagnostics` assembles that status from the node's state.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Dict, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from .parameters import Settings


@dataclass
class QueryStats:
    """Counters shared by the subscription callback and the model worker (thread-safe)."""

    received: int = 0
    answered: int = 0  # localized: OK or LOW_CONFIDENCE
    low_confidence: int = 0
    rejected: int = 0  # EMPTY_QUERY, NOT_TEXT, QUERY_TOO_LONG
    dropped: int = 0
    not_ready: int = 0
    errors: int = 0
    last_latency_ms: float = float("nan")
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def answered_in(self, latency_ms: float, low_confidence: bool) -> None:
        with self._lock:
            self.answered += 1
            self.low_confidence += int(low_confidence)
            self.last_latency_ms = latency_ms

    def snapshot(self) -> Dict[str, str]:
        with self._lock:
            return {"queries received": str(self.received), "queries answered": str(self.answered),
                    "queries low confidence": str(self.low_confidence),
                    "queries rejected": str(self.rejected), "queries dropped": str(self.dropped),
                    "queries not ready": str(self.not_ready), "queries failed": str(self.errors),
                    "last query latency ms": f"{self.last_latency_ms:.1f}"}


def diagnostic_array(stamp, name: str, hardware_id: str, level: bytes, message: str,
                     values: Dict[str, str]) -> DiagnosticArray:
    """A DiagnosticArray holding one status."""
    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                              values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array


def localizer_diagnostics(stamp, name: str, state: str, active: bool, load_error: str,
                          stats: QueryStats, settings: Optional[Settings] = None, localizer=None,
                          queued: int = 0) -> DiagnosticArray:
    """The node's one status (see module docstring).

    ``state`` is the label of its lifecycle state, ``load_error`` why the last
    configure failed ("" if it did not), ``queued`` how many queries wait.
    """
    if active:
        level, message = DiagnosticStatus.OK, "answering queries"
    elif load_error:
        level, message = DiagnosticStatus.ERROR, f"configure failed: {load_error}"
    else:
        level, message = DiagnosticStatus.WARN, f"{state}: not answering queries"
    values = {"state": state}
    if settings is not None and localizer is not None:
        values.update({"map": settings.map_path, "scenes": ", ".join(settings.scenes) or "all",
                       "map cells": localizer.num_cells, "weights": settings.weights_dir,
                       "model": "loaded", "device": str(localizer.device),
                       "queue": f"{queued}/{settings.queue_size}"})
    else:
        values["model"] = "not loaded"
    values.update(stats.snapshot())
    hardware = str(localizer.device) if localizer is not None else "none"
    return diagnostic_array(stamp, name, hardware, level, message, values)
