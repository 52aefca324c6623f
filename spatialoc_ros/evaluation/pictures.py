"""Pictures of localizations: where the text put the robot, how sure it was, where it really was.

One panel per picture, top-down in world metres: the map's object points near
the queries (coloured by class, as ``spatialoc data show`` draws them), the
top-k cells of each query (outlines, darker for better ranks), the best
position with its 1- and 2-sigma covariance ellipses, the ground truth and a
line from prediction to truth. With a single query, the hinted objects of the
best cell (class named in the text) are ringed and the text is the title.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from ..atomic import save_figure
from ..data.schema import Cell
from ..data.show import _class_color, _draw_points, _legend_handles, world_points

MARGIN_M = 25.0  # map drawn around the predictions and truths


@dataclass
class Shown:
    """One query to draw: its Localization and, when known, the true position (world xy)."""

    result: object  # inference.Localization
    truth_xy: Optional[np.ndarray] = None
    label: str = ""


def ellipse_axes(cov: np.ndarray, k: float):
    """(width, height, angle in degrees) of the k-sigma ellipse of a 2x2 covariance."""
    vals, vecs = np.linalg.eigh(np.asarray(cov, dtype=np.float64))
    vals = np.clip(vals, 0.0, None)
    angle = float(np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1])))
    return 2 * k * float(np.sqrt(vals[1])), 2 * k * float(np.sqrt(vals[0])), angle


def hinted_objects(result, cell: Cell):
    """Objects of ``cell`` whose class is named in the query (the ones the text talks about)."""
    text = " ".join(result.hints).lower()
    return [o for o in cell.objects if o.label.lower() in text]


def draw_localizations(shown: Sequence[Shown], cells_by_id: Dict[str, Cell], out, title: str = "",
                       seed: int = 0) -> Path:
    """Draw the queries into one PNG at ``out``; returns its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Ellipse, Rectangle

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(10, 9), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    spots = ([s.result.best.position[:2] for s in shown]
             + [s.truth_xy[:2] for s in shown if s.truth_xy is not None])
    lo, hi = np.min(spots, axis=0) - MARGIN_M, np.max(spots, axis=0) + MARGIN_M
    near = [c for c in cells_by_id.values()
            if c.bbox_w[3] >= lo[0] and c.bbox_w[0] <= hi[0]
            and c.bbox_w[4] >= lo[1] and c.bbox_w[1] <= hi[1]]
    classes = _draw_points(ax, *world_points(near, np.random.default_rng(seed), max_points=60_000))
    for s in shown:
        res = s.result
        # many queries: best cells only
        hyps = res.hypotheses if len(shown) == 1 else res.hypotheses[:1]
        k = len(hyps)
        for h in reversed(hyps):
            x0, y0, _, x1, y1, _ = cells_by_id[h.cell_id].bbox_w
            shade = 0.25 + 0.6 * h.rank / max(1, k - 1)
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                   lw=1.6 if h.rank == 0 else 0.7,
                                   ec=(shade, shade, 1.0) if h.rank else "blue", zorder=3))
        best = res.best.position[:2]
        for sigma, alpha, style in ((1.0, 0.3, "-"), (2.0, 0.0, "--")):
            w, hgt, ang = ellipse_axes(res.covariance_xy, sigma)
            ax.add_patch(Ellipse(best, w, hgt, angle=ang, fc=(1, 0.5, 0, alpha), ec="darkorange",
                                 lw=0.9, ls=style, zorder=6))
        ax.plot(*best, marker="o", ms=6, mfc="darkorange", mec="black", zorder=8)
        if s.truth_xy is not None:
            ax.plot(*s.truth_xy[:2], marker="*", ms=11, mfc="lime", mec="black", zorder=8)
            ax.plot([best[0], s.truth_xy[0]], [best[1], s.truth_xy[1]], color="black", lw=0.8,
                    ls="--", zorder=7)
        if s.label:
            ax.annotate(s.label, best, xytext=(5, 5), textcoords="offset points", fontsize=8,
                        zorder=9)
    if len(shown) == 1:
        cell = cells_by_id[shown[0].result.best.cell_id]
        for obj in hinted_objects(shown[0].result, cell):
            cx, cy = cell.to_world(obj.center[:2])
            ax.plot(cx, cy, marker="o", ms=14, mfc="none", mec=_class_color(obj.label), mew=2.0,
                    zorder=5)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("x (m, east)")
    ax.set_ylabel("y (m, north)")
    ax.set_title(title or (_wrap(shown[0].result.text) if len(shown) == 1
                           else f"{len(shown)} queries"), fontsize=9)
    handles = _legend_handles(Line2D, classes, False, False) + [
        Line2D([], [], ls="", marker="o", ms=6, mfc="darkorange", mec="black",
               label="prediction (1σ, 2σ)"),
        Line2D([], [], ls="", marker="*", ms=10, mfc="lime", mec="black", label="ground truth"),
        Line2D([], [], color="blue", lw=1.5, label="top-k cells (best darkest)")]
    handles[-3].set_label("prediction (1σ filled, 2σ dashed)")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False)
    save_figure(fig, out, bbox_inches="tight")
    return out


def _wrap(text: str, width: int = 110) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:4])
