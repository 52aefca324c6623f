"""``spatialoc eval``: the papers' protocol on a split or on a file of queries.

Gallery = every cell of the split's scenes. Retrieval recall@k (k = 1, 3, 5):
the query's ground-truth (best) cell is among the first k retrieved: the
protocol of Text2Pos (Kolmet et al., CVPR 2022, arXiv 2203.15125) that
SpatiaLoc (arXiv 2601.03579) reports in Table 2; README.md, "Training and
evaluation", describes it.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..core.map_source import cell_boxes, cell_columns, cell_ids
from ..errors import SpatialocError

log = logging.getLogger(__name__)

RETRIEVAL_KS = (1, 3, 5)
CURVE_KS = tuple(range(1, 11))  # recall@k for the plot


@dataclass
class Query:
    hints: List[str]
    scene: Optional[str]  # short scene name (None: the map's only scene)
    pose_w: np.ndarray
    cell_id: Optional[str] = None
    text: str = ""  # as written or heard; the language front end reads it (empty: the hints)
    # [direction, colour, label] the text states (paraphrase sets): scores the front end
    facts: Optional[list] = None

    def __post_init__(self):
        self.text = self.text or " ".join(self.hints)


def read_queries(path) -> List[Query]:
    """Queries of a JSONL file: ``{"text", "pose_w": [x, y, z]}`` (+ optional ``"scene"`` and
    ``"cell_id"``)."""
    from ..data.constants import scene_short_name
    from ..networks.text_encoder import split_sentences

    queries = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise SpatialocError(f"{path}: {exc.strerror}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            hints = split_sentences(d["text"])
            scene = d.get("scene")
            scene = None if scene is None else scene if len(scene) == 4 \
                else scene_short_name(scene)
            pose_w = np.asarray(d["pose_w"], dtype=np.float64).reshape(3)
        except (ValueError, KeyError, TypeError) as exc:
            raise SpatialocError(f"{path}:{n}: not a query ({exc})") from None
        if not hints:
            raise SpatialocError(f"{path}:{n}: empty text")
        queries.append(Query(hints, scene, pose_w, d.get("cell_id"), d["text"], d.get("facts")))
    if not queries:
        raise SpatialocError(f"{path}: no queries")
    return queries


def best_cell_ids(queries: List[Query], cells) -> List[str]:
    """Ground-truth cells: the given id, else the cell of the query's scene with the nearest
    centre."""
    boxes = cell_boxes(cells)
    centers = (boxes[:, :3] + boxes[:, 3:]) / 2.0
    scenes = np.array(cell_columns(cells)[2])
    cell_id = cell_ids(cells)
    ids = []
    for q in queries:
        if q.cell_id is not None:
            ids.append(q.cell_id)
            continue
        same = np.flatnonzero(scenes == q.scene)
        if len(same) == 0:
            raise SpatialocError(f"query in scene {q.scene}: no cell of that scene in the gallery")
        ids.append(cell_id[same[np.argmin(np.linalg.norm(centers[same] - q.pose_w, axis=1))]])
    return ids


def evaluate(data: str, split: str, weights: str = "models", queries_file: Optional[str] = None,
             cache: Optional[str] = None, device: str = "auto", progress: bool = True,
             fit_calibration: bool = False, show: int = 0, show_dir: Optional[str] = None,
             distractors: Sequence[str] = (), retriever: str = "auto",
             cell_rows: str = "auto") -> dict:
    """The evaluation report (the JSON of ``spatialoc eval --json``).

    With fine weights in ``weights`` the whole pipeline runs (retrieval and
    localization recall, calibration); with coarse weights only, retrieval.
    ``fit_calibration`` fits the covariance calibration on these queries and
    writes it to ``weights/calibration.json`` (do it on the validation split).
    ``show`` draws that many queries (a fixed random sample) into ``show_dir``.
    ``distractors``: scenes whose cells join the gallery as wrong answers only
    (their queries are not asked), e.g. training scenes to fit the calibration
    on validation queries against a gallery as large as a city's.
    """
    from ..data.constants import SPLITS
    from ..data.kitti360pose import load_split
    from ..data.kitti360pose import resolve_scene

    data_split = load_split(data, split)
    distractors = sorted({resolve_scene(d) for d in distractors} - set(data_split.scenes))
    if distractors and split != "val":
        raise SpatialocError("--distractors widens the validation gallery: use --split val")
    if set(distractors) & set(SPLITS["test"]):
        raise SpatialocError("--distractors: test scenes cannot take part in a validation run")
    if queries_file:
        queries = read_queries(queries_file)
        if any(q.scene is None for q in queries):
            raise SpatialocError(f"{queries_file}: every query needs its \"scene\" on a split")
    else:
        queries = [Query([h.text for h in p.hints], p.scene, p.pose_w, p.cell_id)
                   for p in data_split.poses]
    gt = best_cell_ids(queries, data_split.cells)
    gallery_ids = {c.id for c in data_split.cells}
    unknown = [g for g in gt if g not in gallery_ids]  # checked before any encoding is paid for
    if unknown:
        raise SpatialocError(f"ground-truth cell {unknown[0]} is not in the {split} gallery")
    if fit_calibration and split != "val":
        raise SpatialocError("--fit-calibration fits on validation data: use --split val")
    report = {"split": split, "num_queries": len(queries), "weights": str(weights)}
    if queries_file:
        report["queries"] = str(queries_file)
    if (Path(weights) / "fine.safetensors").exists():
        from ..inference import Localizer

        loc = Localizer(data, weights, scenes=list(data_split.scenes) + list(distractors),
                        device=device, cache=cache, top_k=max(CURVE_KS), progress=progress,
                        retriever=retriever, cell_rows=cell_rows)
        report.update(_pipeline(loc, weights, queries, gt, progress, fit_calibration, show,
                                show_dir, data_split.name, distractors))
        if distractors:
            report["distractors"] = distractors
    elif distractors:
        raise SpatialocError("--distractors needs fine weights (it is for the localization "
                             "figures)")
    elif fit_calibration or show:
        raise SpatialocError(f"{weights}: no fine.safetensors, so there is no position to "
                             "calibrate or draw")
    else:
        report.update(_retrieval(data, split, data_split, weights, queries, gt, cache, device,
                                 progress))
    return report


def evaluate_map(map_dir: str, queries_file: str, weights: str = "models",
                 scenes: Optional[Sequence[str]] = None, cache: Optional[str] = None,
                 device: str = "auto", progress: bool = True, show: int = 0,
                 show_dir: Optional[str] = None, cell_rows: str = "auto") -> dict:
    """Recorded descriptions (``{"text", "pose_w"}``, the map's world coordinates) against any
    map: localization recall and calibration; retrieval recall only where every query names
    its cell (``"cell_id"``) or the map is a KITTI360Pose folder, whose ground-truth cells the
    benchmark defines."""
    from ..core.map_source import KittiPoseMap, open_map
    from ..data.constants import scene_short_name
    from ..inference import Localizer

    if not (Path(weights) / "fine.safetensors").exists():
        raise SpatialocError(f"{weights}: no fine.safetensors; eval --map measures positions")
    queries = read_queries(queries_file)
    source = open_map(map_dir, scenes)
    short = ([scene_short_name(s) for s in source.scenes] if isinstance(source, KittiPoseMap)
             else source.scenes)
    for q in queries:
        if not isinstance(source, KittiPoseMap) or (q.scene is None and len(short) == 1):
            q.scene = short[0]  # a built map is one place: its queries are all in it
        elif q.scene not in short:
            raise SpatialocError(f"{queries_file}: a query of scene {q.scene} is not in the "
                                 f"map's scenes ({', '.join(short)})")
    loc = Localizer(source, weights, device=device, cache=cache, top_k=max(CURVE_KS),
                    progress=progress, cell_rows=cell_rows)
    named = all(q.cell_id is not None for q in queries)
    gt = None
    if isinstance(source, KittiPoseMap) or named:
        gt = best_cell_ids(queries, loc.cells)
        unknown = [g for g in gt if g not in loc.map.cells_by_id]
        if unknown:
            raise SpatialocError(f"{queries_file}: cell {unknown[0]} is not in the map")
    report = {"map": str(map_dir), "frame_id": source.frame_id, "num_queries": len(queries),
              "weights": str(weights)}
    report.update(_pipeline(loc, weights, queries, gt, progress, False, show, show_dir))
    return report


def _retrieval(data, split, data_split, weights, queries, gt, cache, device, progress) -> dict:
    """Coarse weights only: retrieval recall."""
    from ..core.device import pick_device
    from ..core.encoding import encode_queries
    from ..core.retrieval import rank_cells, retrieval_metrics
    from ..core.coarse_stage import load_coarse_stage

    from ..core.language import LanguageFrontEnd, canonical_sentences, read_texts
    from ..core.query_text import DEFAULT_MAX_HINTS

    dev = pick_device(device)
    stage = load_coarse_stage(weights, data, split, data_split.cells, [canonical_sentences()],
                              cache=cache, device=dev, progress=progress)
    readings = read_texts(LanguageFrontEnd(stage.text.encoder), [q.text for q in queries],
                          DEFAULT_MAX_HINTS)
    hint_lists = [r.hints for r in readings]
    stage.text.add(sorted({s for h in hint_lists for s in h}))
    encoded = encode_queries(stage.model, stage.text, hint_lists, device=dev, progress=progress)
    top = rank_cells(encoded, stage.gallery.descriptors, stage.score_terms, k=max(CURVE_KS))
    gt_rows = stage.gallery.rows(gt)
    return {"gallery_cells": len(stage.gallery),
            "retrieval_recall": retrieval_metrics(top, gt_rows, RETRIEVAL_KS),
            "retrieval_recall_curve": retrieval_metrics(top, gt_rows, CURVE_KS),
            "score_terms": list(stage.score_terms)}


def _pipeline(loc, weights, queries, gt, progress, fit, show=0, show_dir=None,
              fitted_on="", distractors=()) -> dict:
    """Coarse + fine: retrieval recall (where ``gt`` names the queries' cells), localization
    recall and the calibration of the published covariance."""
    import torch
    from tqdm import tqdm

    from ..atomic import write_json
    from ..core.consensus import fit_consensus
    from ..core.confidence import RIGHT_M, ProbabilityModel, inflate_covariance
    from ..core.covariance import informative_scores, published_covariance
    from ..core.weights import CALIBRATION_FILE
    from .confidence_fit import reliability
    from ..inference import Candidates
    from ..core.retrieval import retrieval_metrics
    from .localization import (calibration_report, candidate_errors, elsewhere_errors,
                               fit_calibration, localization_recall)

    readings = loc.read([q.text for q in queries])  # the language front end, as in localize()
    hint_lists = [r.hints for r in readings]
    loc.encode_sentences(sorted({s for h in hint_lists for s in h}))
    parts = []
    for start in tqdm(range(0, len(queries), 64), desc="queries", unit="batch",
                      disable=not progress):
        parts.append(loc.candidates(hint_lists[start:start + 64], max(CURVE_KS)))
    cand = Candidates(*(torch.cat([getattr(c, n) for c in parts])
                        for n in ("rows", "scores", "positions", "precision", "cell_size")))
    cand.scores, cand.precision = cand.scores.double(), cand.precision.double()
    truth = torch.tensor(np.stack([q.pose_w[:2] for q in queries]), dtype=torch.float64)
    query_scene = np.array([q.scene for q in queries])[:, None]
    scenes = np.array(cell_columns(loc.cells)[2])

    def same_scene(c: Candidates) -> torch.Tensor:
        return torch.from_numpy(scenes[c.rows.numpy()] == query_scene)

    def errors_of(c: Candidates) -> torch.Tensor:
        return candidate_errors(c.positions, same_scene(c), truth)

    errors = errors_of(cand)  # the protocol: retrieval order, each cell's own position
    out = {"gallery_cells": loc.num_cells}
    if gt is not None:
        gt_rows = loc.rows_of(gt)
        out["retrieval_recall"] = retrieval_metrics(cand.rows, gt_rows, RETRIEVAL_KS)
        out["retrieval_recall_curve"] = retrieval_metrics(cand.rows, gt_rows, CURVE_KS)
    out["localization_recall"] = localization_recall(errors)
    out["score_terms"] = list(loc.coarse.score_terms)
    informative = torch.tensor([r.informative for r in readings], dtype=torch.float64)
    evidence = torch.tensor([r.evidence for r in readings], dtype=torch.float64)
    out["understood"] = float(informative.mean())
    if all(q.facts is not None for q in queries):
        out["language"] = _facts_read(queries, readings)
    weighted = informative_scores(cand.scores, informative)  # what the published answer uses
    if fit:
        beta, bandwidth, _ = fit_consensus(cand.positions, weighted, loc.scene_index[cand.rows],
                                           truth, same_scene(cand))
        loc.calibration.consensus_beta, loc.calibration.consensus_bandwidth_m = beta, bandwidth
    # the fit of the covariance below leaves the order as it is
    ordered = loc.consensus(cand, informative)
    if fit:
        gallery = (f", gallery {loc.num_cells} cells with {', '.join(distractors)}"
                   if distractors else "")
        cal, _ = fit_calibration(cand.positions, informative_scores(cand.scores, evidence),
                                 cand.precision, cand.cell_size, truth,
                                 fitted_on=f"{fitted_on}: {len(queries)} queries{gallery}",
                                 centre=ordered.positions[:, 0], consensus=(beta, bandwidth),
                                 same_scene=same_scene(ordered)[:, 0])
        path = Path(weights) / CALIBRATION_FILE
        if loc.calibration.probability:
            log.warning("the refitted covariance calibration drops the probability model fitted "
                        "on the old one: fit it again with --fit-probability")
        write_json(path, cal.to_dict())
        loc.calibration = cal
        out["calibration_file"] = str(path)
    published = errors_of(ordered)
    out["published_recall"] = localization_recall(published)
    cov = published_covariance(cand.positions, cand.scores, cand.precision, cand.cell_size,
                               loc.calibration, evidence, centre=ordered.positions[:, 0])
    model = ProbabilityModel.from_dict(loc.calibration.probability)
    if model is not None:  # what is published: the far term for the answer's doubt
        p = model.probability(loc.answer_features(ordered, evidence, informative))
        cov = inflate_covariance(cov, p, model.far_variance_m2, model.far_power)
        right = (same_scene(ordered)[:, 0]
                 & ((truth - ordered.positions[:, 0]).norm(dim=1) <= RIGHT_M))
    out["calibration"] = calibration_report(
        elsewhere_errors(truth - ordered.positions[:, 0], same_scene(ordered)[:, 0]), cov)
    out["calibration"]["one_frame"] = _one_frame_coverage(loc, ordered, truth,
                                                          query_scene[:, 0], scenes, cov)
    out["calibration"].update(loc.calibration.to_dict())
    if model is not None:
        out["calibration"]["probability"] = reliability(p, right)
    out["top1_error_m"] = {"median": float(errors[:, 0].clamp(max=1e9).median()),
                           "published_median": float(published[:, 0].clamp(max=1e9).median())}
    if show:
        out["pictures"] = _draw(loc, queries, show, show_dir or "out/eval")
    return out


def _one_frame_coverage(loc, ordered, truth, query_scene, scenes, cov) -> Optional[dict]:
    """The 1- and 2-sigma shares with the gallery's scenes laid out as districts of one frame
    (:mod:`.city_layout`), as a city map's would be: an answer in another scene is then off
    by the distance between the districts instead of outside every ellipse. None for a
    gallery of one scene (the same figures as the report's)."""
    import torch

    from .city_layout import district_offsets
    from .localization import mahalanobis_sq

    origin, size, scene_index = loc.cell_frames()
    if int(scene_index.max()) == 0:
        return None
    index_of = {name: int(i) for name, i in zip(scenes, scene_index.tolist())}
    if any(name not in index_of for name in query_scene):
        return None  # a query of a scene the gallery does not hold
    offsets = district_offsets(origin, size, scene_index)
    asked = offsets[torch.tensor([index_of[name] for name in query_scene])]
    answered = offsets[loc.scene_index[ordered.rows[:, 0]]]
    d2 = mahalanobis_sq(truth + asked - ordered.positions[:, 0] - answered, cov)
    return {"within_1sigma": float((d2 <= 1).double().mean()),
            "within_2sigma": float((d2 <= 4).double().mean())}


def _facts_read(queries, readings) -> dict:
    """How many of the stated facts the front end read back, and how many it added wrongly."""
    from collections import Counter

    stated = read = wrong = 0
    for q, r in zip(queries, readings):
        want = Counter(tuple(f) for f in q.facts)
        got = Counter((c.direction, c.colour, c.label) for c in r.understanding.used)
        stated += sum(want.values())
        read += sum((want & got).values())
        wrong += sum((got - want).values())
    return {"facts_stated": stated, "facts_read": read / max(1, stated),
            "wrong_facts": wrong / max(1, stated)}


def _draw(loc, queries, count: int, folder: str) -> List[str]:
    """One picture per query of a fixed random sample, and one of all of them together."""
    from .pictures import Shown, draw_localizations

    rng = np.random.default_rng(0)
    picked = sorted(rng.choice(len(queries), min(count, len(queries)), replace=False).tolist())
    shown = [Shown(loc.localize(" ".join(queries[i].hints)), queries[i].pose_w[:2], f"#{i}")
             for i in picked]
    paths = [draw_localizations([s], loc.map.cells_by_id, Path(folder) / f"query_{i:05d}.png")
             for i, s in zip(picked, shown)]
    by_scene = {}
    for s in shown:
        by_scene.setdefault(s.result.best.scene, []).append(s)
    scene, group = max(by_scene.items(), key=lambda kv: len(kv[1]))
    paths.append(draw_localizations(group, loc.map.cells_by_id, Path(folder) / "overview.png",
                                    title=f"{len(group)} queries of scene {scene}"))
    return [str(p) for p in paths]


def format_report(report: dict) -> str:
    where = report.get("split") or report.get("map")
    lines = [f"{where}: {report['num_queries']} queries, gallery of "
             f"{report['gallery_cells']} cells"]
    r = report.get("retrieval_recall")
    lines.append(f"retrieval recall@1/3/5: {r['1']:.3f} / {r['3']:.3f} / {r['5']:.3f}" if r else
                 "retrieval recall: not measured (the queries name no ground-truth cell)")
    for k, by_eps in report.get("localization_recall", {}).items():
        lines.append(f"localization recall k={k:>2} within 5/10/15 m: "
                     + " / ".join(f"{by_eps[e]:.3f}" for e in ("5", "10", "15")))
    cal = report.get("calibration") or {}
    if report.get("published_recall") and cal.get("consensus_bandwidth_m", 0) > 0:
        lines.append(f"published answer (consensus of overlapping cells, beta "
                     f"{cal['consensus_beta']:g}, bandwidth {cal['consensus_bandwidth_m']:g} m):")
        for k, by_eps in report["published_recall"].items():
            lines.append(f"  recall k={k:>2} within 5/10/15 m: "
                         + " / ".join(f"{by_eps[e]:.3f}" for e in ("5", "10", "15")))
    if cal:
        lines.append(f"calibration: {100 * cal['within_1sigma']:.1f} % inside 1 sigma "
                     f"(39.3 % ideal), {100 * cal['within_2sigma']:.1f} % inside 2 sigma "
                     f"(86.5 %), mean NLL {cal['nll']:.2f}, median 1-sigma "
                     f"{cal['median_sigma_m']:.1f} m"
                     + ("" if cal.get("fitted_on") else " (uncalibrated)"))
        if cal.get("elsewhere"):
            lines.append(f"  {100 * cal['elsewhere']:.1f} % of the answers are in another scene: "
                         "outside every ellipse")
        one = cal.get("one_frame")
        if one:
            lines.append(f"  the scenes laid out as districts of one frame: "
                         f"{100 * one['within_1sigma']:.1f} % inside 1 sigma, "
                         f"{100 * one['within_2sigma']:.1f} % inside 2 sigma")
        prob = cal.get("probability")
        if prob:
            lines.append(f"answer probability of being within 10 m: mean "
                         f"{prob['mean_probability']:.3f} (right {prob['right_share']:.3f}), "
                         f"ECE {prob['ece']:.3f}, "
                         f"AUROC {prob['auroc']:.3f}")
    if report.get("order_sensitivity"):
        from .order_sensitivity import format_order_sensitivity
        lines.append(format_order_sensitivity(report["order_sensitivity"]))
    return "\n".join(lines)


def load_reports(paths: Sequence[str]) -> List[dict]:
    """Reports saved from ``spatialoc eval --json`` (one object, or a list of them, per file)."""
    reports = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise SpatialocError(f"{path}: not a saved 'spatialoc eval --json' report "
                                 f"({exc})") from None
        for r in data if isinstance(data, list) else [data]:
            if not isinstance(r, dict) or "retrieval_recall" not in r:
                raise SpatialocError(f"{path}: not a saved 'spatialoc eval --json' report "
                                     "(no retrieval_recall)")
            reports.append(r)
    return reports


def format_table(reports: Sequence[dict], names: Sequence[str]) -> str:
    """A Markdown table of several reports' retrieval recall (and k = 1 localization recall when
    present)."""
    loc = all("localization_recall" in r for r in reports)
    published = all("published_recall" in r for r in reports)
    understood = all("understood" in r for r in reports)
    head = (["weights", "recall@1", "recall@3", "recall@5"]
            + (["k=1 within 5/10/15 m"] if loc else [])
            + (["published k=1 within 5/10/15 m", "inside 1 / 2 sigma (%)"] if published else [])
            + (["understood"] if understood else []))
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in zip(names, reports):
        cells = [name] + [f"{r['retrieval_recall'][k]:.3f}" for k in ("1", "3", "5")]
        if loc:
            cells.append(" / ".join(f"{r['localization_recall']['1'][e]:.3f}"
                                    for e in ("5", "10", "15")))
        if published:
            cells.append(" / ".join(f"{r['published_recall']['1'][e]:.3f}"
                                    for e in ("5", "10", "15")))
            cal = r["calibration"]
            cells.append(f"{100 * cal['within_1sigma']:.1f} / {100 * cal['within_2sigma']:.1f}")
        if understood:
            cells.append(f"{r['understood']:.2f}")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
