"""RViz markers of one answer: where the model looked, where it settled, and on what.

One MarkerArray per query, opening with DELETEALL so the previous answer's
markers go away (and a late subscriber of the latched topic gets a clean
picture). Namespaces:

- ``cells``: the top-k retrieved cells as translucent boxes, best green to worst red;
- ``best``: a sphere at the best position;
- ``ellipse``: its 1-sigma ellipse, a flat cylinder whose axes are twice the
  square roots of the covariance eigenvalues, turned along the eigenvectors;
- ``hinted_objects`` / ``hinted_labels``: the best cell's objects whose class
  the text names, as boxes in the object's colour with the class name above;
- ``query``: the query text above the best position.
"""
from __future__ import annotations

import math
import re
from typing import List

import numpy as np
from geometry_msgs.msg import Point, Quaternion
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from .conversions import safe_covariance_xy

ELLIPSE_HEIGHT_M = 0.2
BEST_SPHERE_M = 1.5
TEXT_HEIGHT_M = 2.0
TEXT_LIFT_M = 6.0  # query text floats this far above the best position
MAX_TEXT_CHARS = 160


def rank_color(rank: int, count: int, alpha: float = 0.25) -> ColorRGBA:
    """Green for the best of ``count`` hypotheses, shading to red for the last."""
    t = rank / max(count - 1, 1)
    return ColorRGBA(r=float(t), g=float(1.0 - t), b=0.1, a=alpha)


def yaw_quaternion(yaw: float) -> Quaternion:
    """Rotation by ``yaw`` radians about z."""
    return Quaternion(z=math.sin(yaw / 2.0), w=math.cos(yaw / 2.0))


def ellipse_axes(cov_xy):
    """(major diameter, minor diameter, yaw of the major axis) of the 1-sigma ellipse,
    metres/radians."""
    values, vectors = np.linalg.eigh(safe_covariance_xy(cov_xy))  # ascending
    major, minor = (2.0 * math.sqrt(max(float(v), 0.0)) for v in values[::-1])
    return major, minor, math.atan2(vectors[1, 1], vectors[0, 1])


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS - 3] + "..."


def named_classes(text: str, labels) -> set:
    """The labels among ``labels`` that occur as words in ``text`` (case-insensitive)."""
    lower = text.lower()
    return {label for label in labels if re.search(rf"\b{re.escape(label.lower())}\b", lower)}


def _marker(header, ns: str, mid: int, kind: int, color: ColorRGBA) -> Marker:
    m = Marker(header=header, ns=ns, id=mid, type=kind, action=Marker.ADD, color=color)
    m.pose.orientation.w = 1.0
    return m


def localization_markers(localization, cells_by_id, header) -> MarkerArray:
    """The markers of one answer (see module docstring); ``cells_by_id``: the loaded map's
    cells."""
    markers: List[Marker] = [Marker(header=header, action=Marker.DELETEALL)]
    hyps = localization.hypotheses
    for h in hyps:
        cell = cells_by_id.get(h.cell_id)
        if cell is None:
            continue
        box = _marker(header, "cells", h.rank, Marker.CUBE, rank_color(h.rank, len(hyps)))
        lo, hi = np.asarray(cell.bbox_w[:3], float), np.asarray(cell.bbox_w[3:], float)
        box.pose.position = Point(x=float((lo[0] + hi[0]) / 2), y=float((lo[1] + hi[1]) / 2),
                                  z=float((lo[2] + hi[2]) / 2))
        box.scale.x, box.scale.y, box.scale.z = (float(v) for v in np.maximum(hi - lo, 1e-3))
        markers.append(box)

    best = localization.best
    x, y, z = (float(v) for v in best.position[:3])
    sphere = _marker(header, "best", 0, Marker.SPHERE, ColorRGBA(r=0.1, g=0.4, b=1.0, a=1.0))
    sphere.pose.position = Point(x=x, y=y, z=z)
    sphere.scale.x = sphere.scale.y = sphere.scale.z = BEST_SPHERE_M
    markers.append(sphere)

    major, minor, yaw = ellipse_axes(localization.covariance_xy)
    ellipse = _marker(header, "ellipse", 0, Marker.CYLINDER,
                      ColorRGBA(r=0.1, g=0.4, b=1.0, a=0.35))
    ellipse.pose.position = Point(x=x, y=y, z=z)
    ellipse.pose.orientation = yaw_quaternion(yaw)
    ellipse.scale.x, ellipse.scale.y, ellipse.scale.z = (max(major, 1e-3), max(minor, 1e-3),
                                                         ELLIPSE_HEIGHT_M)
    markers.append(ellipse)

    cell = cells_by_id.get(best.cell_id)
    if cell is not None:
        named = named_classes(" ".join(localization.hints), {o.label for o in cell.objects})
        hinted = [o for o in cell.objects if o.label in named and len(o.xyz)]
        for i, obj in enumerate(hinted):
            pts = cell.to_world(obj.xyz)
            lo, hi = pts.min(axis=0), pts.max(axis=0)
            r, g, b = (float(v) for v in obj.color_rgb)
            box = _marker(header, "hinted_objects", i, Marker.CUBE,
                          ColorRGBA(r=r, g=g, b=b, a=0.6))
            box.pose.position = Point(x=float((lo[0] + hi[0]) / 2), y=float((lo[1] + hi[1]) / 2),
                                      z=float((lo[2] + hi[2]) / 2))
            box.scale.x, box.scale.y, box.scale.z = (float(v) for v in np.maximum(hi - lo, 0.2))
            markers.append(box)
            label = _marker(header, "hinted_labels", i, Marker.TEXT_VIEW_FACING,
                            ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0))
            label.pose.position = Point(x=box.pose.position.x, y=box.pose.position.y,
                                        z=float(hi[2]) + TEXT_HEIGHT_M)
            label.scale.z = TEXT_HEIGHT_M
            label.text = obj.label
            markers.append(label)

    text = localization.text
    understanding = getattr(localization, "understanding", None)
    if understanding is not None and understanding.used:
        # what the models read, one understood hint a line, under the words as heard
        read = "\n".join(" ".join(w for w in (c.direction, "of", c.colour, c.label) if w)
                         for c in understanding.used)
        text = f"{_clip(text)}\nunderstood ({understanding.understood:.0%}):\n{read}"
    query = _marker(header, "query", 0, Marker.TEXT_VIEW_FACING,
                    ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0))
    query.pose.position = Point(x=x, y=y, z=z + TEXT_LIFT_M)
    query.scale.z = TEXT_HEIGHT_M
    query.text = text if understanding is not None and understanding.used else _clip(text)
    markers.append(query)
    return MarkerArray(markers=markers)
