"""``spatialoc eval``: the papers' protocol on a split or on a file of queries.

Gallery = every cell of the split's scenes. Retrieval recall@k (k = 1, 3, 5):
the query's ground-truth (best) cell is among the first k retrieved
(kitti360pose_format.md §7.1; ARCHITECTURE §5).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..errors import SpatialocError

RETRIEVAL_KS = (1, 3, 5)
CURVE_KS = tuple(range(1, 11))  # recall@k for the plot


@dataclass
class Query:
    hints: List[str]
    scene: str  # short scene name
    pose_w: np.ndarray
    cell_id: Optional[str] = None


def read_queries(path) -> List[Query]:
    """Queries of a JSONL file: ``{"text", "scene", "pose_w": [x, y, z]}`` (+ optional ``"cell_id"``)."""
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
            scene = d["scene"] if len(d["scene"]) == 4 else scene_short_name(d["scene"])
            pose_w = np.asarray(d["pose_w"], dtype=np.float64).reshape(3)
        except (ValueError, KeyError, TypeError) as exc:
            raise SpatialocError(f"{path}:{n}: not a query ({exc})") from None
        if not hints:
            raise SpatialocError(f"{path}:{n}: empty text")
        queries.append(Query(hints, scene, pose_w, d.get("cell_id")))
    if not queries:
        raise SpatialocError(f"{path}: no queries")
    return queries


def best_cell_ids(queries: List[Query], cells) -> List[str]:
    """Ground-truth cells: the given id, else the cell of the query's scene with the nearest centre."""
    centers = np.stack([c.center_w for c in cells])
    scenes = np.array([c.scene for c in cells])
    ids = []
    for q in queries:
        if q.cell_id is not None:
            ids.append(q.cell_id)
            continue
        same = np.flatnonzero(scenes == q.scene)
        if len(same) == 0:
            raise SpatialocError(f"query in scene {q.scene}: no cell of that scene in the gallery")
        ids.append(cells[same[np.argmin(np.linalg.norm(centers[same] - q.pose_w, axis=1))]].id)
    return ids


def evaluate(data: str, split: str, weights: str = "models", queries_file: Optional[str] = None,
             cache: Optional[str] = None, device: str = "auto", progress: bool = True) -> dict:
    """The evaluation report (the JSON of ``spatialoc eval --json``)."""
    from ..data.kitti360pose import load_split
    from ..training.coarse_trainer import pick_device
    from .coarse_eval import encode_queries, rank_cells, retrieval_metrics
    from .loading import load_coarse_stage

    dev = pick_device(device)
    data_split = load_split(data, split)
    if queries_file:
        queries = read_queries(queries_file)
    else:
        queries = [Query([h.text for h in p.hints], p.scene, p.pose_w, p.cell_id) for p in data_split.poses]
    gt = best_cell_ids(queries, data_split.cells)
    gallery_ids = {c.id for c in data_split.cells}
    unknown = [g for g in gt if g not in gallery_ids]  # checked before any encoding is paid for
    if unknown:
        raise SpatialocError(f"ground-truth cell {unknown[0]} is not in the {split} gallery")
    stage = load_coarse_stage(weights, data, split, data_split.cells, [q.hints for q in queries], cache=cache,
                              device=dev, progress=progress)
    encoded = encode_queries(stage.model, stage.text, [q.hints for q in queries], device=dev, progress=progress)
    top = rank_cells(encoded, stage.gallery.descriptors, stage.score_terms, k=max(CURVE_KS))
    gt_rows = stage.gallery.rows(gt)
    return {"split": split, "num_queries": len(queries), "gallery_cells": len(stage.gallery),
            "retrieval_recall": retrieval_metrics(top, gt_rows, RETRIEVAL_KS),
            "retrieval_recall_curve": retrieval_metrics(top, gt_rows, CURVE_KS),
            "weights": str(weights), "score_terms": list(stage.score_terms)}


def format_report(report: dict) -> str:
    r = report["retrieval_recall"]
    return (f"{report['split']}: {report['num_queries']} queries, gallery of {report['gallery_cells']} cells\n"
            f"retrieval recall@1/3/5: {r['1']:.3f} / {r['3']:.3f} / {r['5']:.3f}")


