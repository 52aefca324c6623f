"""Pictures of evaluation results."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..atomic import save_figure


def plot_recall_curves(reports: Sequence[dict], labels: Sequence[str], out) -> Path:
    """Retrieval recall@k against k, one line per evaluated model, into a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for report, label in zip(reports, labels):
        curve = report["retrieval_recall_curve"]
        ks = sorted(int(k) for k in curve)
        ax.plot(ks, [curve[str(k)] for k in ks], marker="o", label=label)
    first = reports[0]
    ax.set_xlabel("k (cells retrieved)")
    ax.set_ylabel("retrieval recall@k")
    ax.set_ylim(0, 1)
    ax.set_xticks(range(1, 11))
    ax.grid(alpha=0.3)
    ax.set_title(f"{first['split']} split: {first['num_queries']} queries, "
                 f"{first['gallery_cells']} cells")
    ax.legend(loc="lower right", fontsize=8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out, bbox_inches="tight")
    return out
