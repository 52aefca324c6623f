"""``spatialoc bench --scale N``: the test queries against a gallery grown to N cells.

The gallery is the benchmark's test gallery (its 4,139 cells at the benchmark
preset, seed 0) followed by the first N - 4,139 distractor cells of
:mod:`.distractors` (real cells of other synthetic cities). Queries are a fixed
sample of the test split's descriptions; only the test cells can be right.

Per query, timed one at a time as the node runs them: the language front end
and text encoder (cold: nothing cached, as for a description never heard), the
retriever (two-stage by default: faiss shortlist + exact fused rerank, see
:mod:`..core.ann_retriever`), the fine stage on the top k, the consensus and
the published covariance. Reported: ``query_ms`` (median, p95), the index build
time, peak resident memory, retrieval recall@1/3/5, the same with exhaustive
scoring where it fits in memory (``exhaustive_retrieval_recall``, the
reference), the published answer's recall within 5/10/15 m (k = 1), and the
calibration of the published covariance.

``--distinct D`` caps the distinct cells at D: the rows beyond repeat the
distractor rows (:class:`RepeatedRows`), which gives a gallery of N cells for
query time, memory and index build without encoding N real cells; its recall
keys are null (the figures of the repeated gallery are kept under
``*_of_repeated_gallery``).
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..errors import SpatialocError
from .bench import peak_rss_mb, rss_parts_mb, summary

# exhaustive reference up to here: it reads the instance features in blocks (P_glo and the raw
# term scores stay in memory), and takes about a minute per 100,000 cells for 300 queries
EXHAUSTIVE_MAX_CELLS = 150_000


def distractor_store(loc, data, count: int, cache=None, progress: bool = True):
    """The first ``count`` distractor rows for ``loc``'s weights (built the first time)."""
    from ..core.frozen_inputs import cache_dir
    from .distractors import build_distractors, distractor_key

    folder = cache_dir(data, cache) / f"distractors-{distractor_key(loc.weights)}"
    return build_distractors(folder, count, loc.weights, progress=progress).head(count)


class RepeatedRows:
    """The rows of ``store`` again and again up to ``total`` rows; every repetition's scenes
    are scenes of their own (so copies never count as agreeing cells).

    A gallery of a million distinct real cells takes about a day to encode on 2 cores; this
    one has the size, layout and memory-mapped reads of one, so its query time, memory and
    index build are those of a gallery that size. Its recall is not: a repeated cell adds no
    new look-alike place, so recall is reported for the distinct rows only.
    """

    def __init__(self, store, total: int):
        if len(store) == 0:
            raise SpatialocError("no distractor rows to repeat")
        self.store, self.total = store, int(total)
        self.copies = -(-self.total // len(store))

    def __len__(self) -> int:
        return self.total

    def column(self, name: str) -> np.ndarray:
        values = np.asarray(self.store.column(name))
        if name == "scene":
            shift = len(self.store.scenes) * np.arange(self.copies)
            values = (values[None, :] + shift[:, None]).reshape(-1)
        else:
            values = np.concatenate([values] * self.copies)
        return values[:self.total]

    def scene_names(self) -> List[str]:
        names = self.store.scene_names()
        return [f"{n}#{k}" for k in range(self.copies) for n in names][:self.total]

    def global_descriptors(self) -> torch.Tensor:
        one = self.store.global_descriptors()
        out = torch.empty((self.total, one.shape[1]), dtype=one.dtype)
        for k in range(self.copies):
            start = k * len(one)
            out[start:start + len(one)] = one[:self.total - start]
        return out

    def instance(self, rows: torch.Tensor):
        return self.store.instance(rows % len(self.store))

    def bank_batch(self, rows: torch.Tensor) -> dict:
        return self.store.bank_batch(rows % len(self.store))


def bench_scale(cells: int, data: str = "data/benchmark", weights: str = "models",
                queries: int = 300, top_k: int = 10, retriever: str = "two-stage",
                shortlist: int = 256, index: str = "auto", exhaustive: Optional[bool] = None,
                device: str = "cpu", seed: int = 0, progress: bool = True,
                cache: Optional[str] = None, loc=None, distinct: Optional[int] = None,
                frames: str = "city") -> dict:
    """The figures of the module docstring for a gallery of ``cells`` cells (``loc``: a
    Localizer of the test scenes to reuse). ``distinct``: at most this many distinct cells;
    rows beyond repeat the distractor rows (:class:`RepeatedRows`: query time, memory and
    index build only, no recall). ``frames``: ``city`` lays every scene out as a district of
    one frame (:mod:`.city_layout`), so an answer in another scene has an error in metres;
    ``separate`` keeps a frame per scene (such an answer is outside every ellipse)."""
    from tqdm import tqdm

    from ..data.constants import SPLITS
    from ..inference import Localizer
    from .city_layout import check_frames
    from .confidence_fit import Answers, answers_of, reliability
    from .localization import calibration_report, localization_recall

    check_frames(frames)
    if loc is None:
        loc = Localizer(data, weights, scenes=list(SPLITS["test"]), device=device, cache=cache,
                        top_k=top_k, progress=progress)
    base = len(loc.cells)
    if cells < base:
        raise SpatialocError(f"--scale {cells}: the test gallery alone has {base} cells")
    real = cells - base if distinct is None else max(0, min(cells, distinct) - base)
    store = distractor_store(loc, data, real, cache, progress)
    repeated = cells - base > len(store)
    extra = RepeatedRows(store, cells - base) if repeated else store
    options = {"shortlist": shortlist, "index": index} if retriever == "two-stage" else {}
    index_build_s = loc.grow(extra, retriever, **options)
    offsets = None
    if frames == "city":
        from .city_layout import district_offsets

        offsets = district_offsets(*loc.cell_frames())
        loc.shift_scenes(offsets)

    poses = loc.map.poses
    rng = np.random.default_rng(seed)
    chosen = [poses[i] for i in np.sort(rng.choice(len(poses), min(queries, len(poses)),
                                                   replace=False))]
    gt = loc.rows_of([p.cell_id for p in chosen])           # test rows come first

    def serve(text: str):
        """One query as the node answers it, cold (nothing earlier queries taught is kept; the
        canonical hint sentences' table is), timed per stage."""
        loc.forget_queries()
        timing: Dict[str, float] = {}
        t0 = time.perf_counter()
        reading = loc.read([text])[0]
        t_lang = time.perf_counter()
        loc.encode_sentences(reading.hints)
        t1 = time.perf_counter()
        timing.update(language=1e3 * (t_lang - t0), text=1e3 * (t1 - t0))
        cand = loc.candidates([reading.hints], top_k, timing)
        informative = torch.tensor([reading.informative], dtype=torch.float64)
        evidence = torch.tensor([reading.evidence], dtype=torch.float64)
        ordered = loc.consensus(cand, informative)
        _, cov, prob = loc.published(ordered, evidence, informative)
        timing["total"] = 1e3 * (time.perf_counter() - t0)
        return timing, reading, cand, ordered, cov, prob

    serve(chosen[0].text)  # one-time allocations
    times: Dict[str, List[float]] = {s: [] for s in ("language", "text", "coarse", "fine",
                                                     "total")}
    rows, answers, probs, same_scene = [], [], [], []
    scene_of = {cell.scene: int(loc.scene_index[i]) for i, cell in enumerate(loc.cells)}
    for pose in tqdm(chosen, desc=f"queries at {cells} cells", disable=not progress):
        timing, reading, cand, ordered, cov, prob = serve(pose.text)
        for s in times:
            times[s].append(timing[s])
        rows.append(cand.rows[0])
        same_scene.append(int(loc.scene_index[ordered.rows[0, 0]]) == scene_of[pose.scene])
        truth = torch.tensor(np.array([pose.pose_w[:2]]), dtype=torch.float64)
        answers.append(answers_of(loc, [reading], ordered, truth,
                                  torch.tensor([scene_of[pose.scene]]), offsets))
        answers[-1].cov = cov  # as published (with the far term when a model is fitted)
        if prob is not None:
            probs.append(prob[0, 0])
    rows_t = torch.stack(rows)
    every = Answers.cat(answers)
    err = torch.where(torch.tensor(same_scene), every.err_xy.norm(dim=1),
                      torch.full((len(chosen),), 1e9))  # another scene (or city): a miss
    out = {"cells": len(loc.rows), "test_cells": base,
           "distractor_cells": len(extra), "distinct_cells": base + len(store),
           "queries": len(chosen),
           "retriever": retriever, "top_k": top_k,
           "query_ms": summary(times["total"]),
           "stage_ms": {s: summary(times[s]) for s in ("language", "text", "coarse", "fine")},
           "index_build_s": index_build_s,
           "retrieval_recall": _recall(rows_t, gt),
           "published_recall_k1": localization_recall(err[:, None], ks=(1,))["1"],
           "calibration": dict(calibration_report(every.err_xy, every.cov), frames=frames,
                               another_scene=1.0 - float(np.mean(same_scene))),
           "threads": torch.get_num_threads()}
    if probs:
        out["calibration"]["probability"] = reliability(torch.stack(probs), every.right)
    if retriever == "two-stage":
        out.update(shortlist=shortlist, index=getattr(loc.retriever, "kind", index))
    # serving memory, before the exhaustive reference reads every row (pages of the memory-
    # mapped store count as resident too: ``rss_now_mb`` splits them off)
    out["peak_rss_mb"], out["rss_now_mb"] = peak_rss_mb(), rss_parts_mb()
    if repeated:  # a repeated cell adds no new look-alike: recall says nothing of this size
        for key in ("retrieval_recall", "published_recall_k1", "calibration"):
            out[f"{key}_of_repeated_gallery"], out[key] = out[key], None
        exhaustive = False
    if exhaustive is None:
        exhaustive = len(loc.rows) <= EXHAUSTIVE_MAX_CELLS
    if exhaustive and retriever != "exhaustive":
        out["exhaustive_retrieval_recall"] = _exhaustive_recall(loc, chosen, gt)
        out["peak_rss_with_reference_mb"] = peak_rss_mb()
    out["gallery"] = (f"{base} test cells of {data} (seed 0) + {len(store)} distractor cells: "
                      f"real cells of the benchmark preset's cities with seeds "
                      f"{_seeds(store)}, every scene, no transform")
    if offsets is not None:
        origin, size, _ = loc.cell_frames()
        span = (origin + size[:, None]).amax(0) - origin.amin(0)
        out["gallery"] += (f"; its {len(offsets)} scenes laid out as districts of one frame, "
                           f"{span[0] / 1e3:.1f} km x {span[1] / 1e3:.1f} km")
    if repeated:
        out["gallery"] += (f"; then those {len(store)} distractor rows repeated "
                           f"({extra.copies} copies, cut at {cells} rows): query time, memory "
                           f"and index build of {cells} cells, recall of "
                           f"{base + len(store)} distinct cells")
    return out


def bench_scales(sizes: Sequence[int], data: str = "data/benchmark", weights: str = "models",
                 device: str = "cpu", top_k: int = 10, progress: bool = True,
                 cache: Optional[str] = None, **options) -> List[dict]:
    """:func:`bench_scale` for each size, smallest first, with one Localizer."""
    from ..data.constants import SPLITS
    from ..inference import Localizer

    loc = Localizer(data, weights, scenes=list(SPLITS["test"]), device=device, cache=cache,
                    top_k=top_k, progress=progress)
    return [bench_scale(n, data=data, weights=weights, device=device, top_k=top_k,
                        progress=progress, cache=cache, loc=loc, **options)
            for n in sorted(sizes)]


def _seeds(store) -> str:
    """The seeds of the cities the store's rows come from, e.g. "1-3"."""
    used = sorted({int(name.split("/")[0][1:]) for name in set(store.scene_names())})
    if not used:
        return "none"
    return f"{used[0]}-{used[-1]}" if len(used) > 1 else str(used[0])


def _recall(rows: torch.Tensor, gt: torch.Tensor) -> Dict[str, float]:
    from ..core.retrieval import retrieval_metrics

    return retrieval_metrics(rows, gt, (1, 3, 5))


def _exhaustive_recall(loc, chosen, gt) -> Dict[str, float]:
    """Retrieval recall of exhaustive fused scoring over the same gallery (the reference)."""
    from ..core.encoding import encode_queries
    from ..core.retriever import ExhaustiveRetriever

    ref = ExhaustiveRetriever(loc.rows, loc.weights.score_terms)
    hints = [r.hints for r in loc.read([p.text for p in chosen])]
    loc.encode_sentences(sorted({s for h in hints for s in h}))
    query = encode_queries(loc.coarse.model, loc.text, hints, batch_size=16, device=loc.device)
    return _recall(ref.top_k(query, 5)[1], gt)


def format_scale(rows: List[dict]) -> str:
    """A table of the figures per gallery size."""
    head = (f"{'cells':>9} {'query ms':>9} {'p95':>7} {'recall@1/3/5':>20} "
            f"{'exhaustive @1/3/5':>20} {'published 5/10/15 m':>22} {'1/2 sigma %':>12} "
            f"{'index s':>8} {'RSS MB':>7}")
    lines = [head]
    for r in rows:
        if r.get("retrieval_recall") is None:  # a repeated gallery: time and memory only
            lines.append(f"{r['cells']:>9,} {r['query_ms']['median']:9.1f} "
                         f"{r['query_ms']['p95']:7.1f} {'(repeated rows: no recall)':>75}"
                         f" {r['index_build_s']:8.1f} {r['peak_rss_mb']:7.0f}")
            continue
        rec = " / ".join(f"{r['retrieval_recall'][k]:.3f}" for k in ("1", "3", "5"))
        ex = r.get("exhaustive_retrieval_recall")
        ex = " / ".join(f"{ex[k]:.3f}" for k in ("1", "3", "5")) if ex else "-"
        pub = " / ".join(f"{r['published_recall_k1'][e]:.3f}" for e in ("5", "10", "15"))
        cal = r["calibration"]
        lines.append(f"{r['cells']:>9,} {r['query_ms']['median']:9.1f} {r['query_ms']['p95']:7.1f}"
                     f" {rec:>20} {ex:>20} {pub:>22}"
                     f" {100 * cal['within_1sigma']:5.1f}/{100 * cal['within_2sigma']:4.1f}"
                     f" {r['index_build_s']:8.1f} {r['peak_rss_mb']:7.0f}")
    lines += [f"gallery at {r['cells']:,}: {r['gallery']}" for r in rows
              if r is rows[-1] or r.get("retrieval_recall") is None]
    return "\n".join(lines)


def plot_scale(rows: List[dict], path) -> None:
    """Recall against gallery size (log x): retrieval recall@1/5, published k=1 within 10 m."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("retrieval_recall")]  # repeated galleries: no recall
    n = [r["cells"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, sub, label in (("retrieval_recall", "1", "retrieval recall@1"),
                            ("retrieval_recall", "5", "retrieval recall@5"),
                            ("published_recall_k1", "10", "published k=1 within 10 m")):
        ax.plot(n, [r[key][sub] for r in rows], marker="o", label=label)
    ex = [r for r in rows if "exhaustive_retrieval_recall" in r]
    if ex:
        ax.plot([r["cells"] for r in ex], [r["exhaustive_retrieval_recall"]["1"] for r in ex],
                linestyle="--", marker="x", label="recall@1, exhaustive scoring")
    ax.set_xscale("log")
    ax.set_xlabel("gallery cells (test gallery + distractor cells of other cities)")
    ax.set_ylabel("share of test queries")
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title("Recall as the map grows")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
