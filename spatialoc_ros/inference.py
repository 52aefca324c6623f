"""The full pipeline without ROS: a map and a weights folder -> ``localize(text)`` -> hypotheses.

    text ─ check, split into sentences ─ token embeddings (frozen encoder, cached per sentence)
         ─ coarse stage: text descriptors, fused score against every cell (gallery precomputed)
         ─ top-k cells ─ fine stage (UGFL) on each: offset δ from the cell centre, precision λ
         ─ consensus of overlapping cells (:mod:`.consensus`): order and best position
         ─ world positions (+ ground height), covariances (:mod:`.covariance`)

The map is a KITTI360Pose folder (all its scenes, or those named). The gallery
(cell bank of frozen PointNet++ features and coarse descriptors) is built on the
first start and cached on disk; later starts load it. Each stage is timed.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .covariance import Calibration, hypothesis_variance, informative_scores, published_covariance, sigma_radius_m
from .errors import SpatialocError
from .networks.outputs import CoarseOutputs
from .query_text import DEFAULT_MAX_CHARS, DEFAULT_MAX_HINTS, check_hints, check_text, recognised_hints

CALIBRATION_FILE = "calibration.json"
MAX_CACHED_SENTENCES = 50_000  # the in-memory token cache starts over beyond this


@dataclass
class Hypothesis:
    """One candidate position: a retrieved cell refined by the fine stage."""

    rank: int  # 0 = best
    cell_id: str
    scene: str
    score: float  # fused retrieval score (sum of z-scores, spec §7.6)
    position: np.ndarray  # [3] world metres: x, y from the fine stage, z the ground height there
    covariance_xy: np.ndarray  # [2, 2] m², this hypothesis' own (calibrated) variance
    precision: float  # λ of the fine stage, normalised cell units; nan for a model without the λ head
    agreeing: int = 1  # top-k cells whose positions agree on this place (:mod:`.consensus`), itself included

    def to_json(self) -> dict:
        return {"rank": self.rank, "cell_id": self.cell_id, "scene": self.scene, "score": self.score,
                "position": [float(v) for v in self.position],
                "covariance_xy": self.covariance_xy.tolist(), "precision": self.precision,
                "agreeing_cells": self.agreeing}


@dataclass
class Localization:
    """The answer to one query: hypotheses best first, the published covariance, timing."""

    text: str
    hints: List[str]
    hypotheses: List[Hypothesis]
    covariance_xy: np.ndarray  # [2, 2] m² about the best position: fine variance + retrieval doubt
    recognised_hints: int  # sentences that name a known class or colour
    timing_ms: Dict[str, float] = field(default_factory=dict)

    @property
    def best(self) -> Hypothesis:
        return self.hypotheses[0]

    @property
    def sigma_m(self) -> float:
        """1-sigma radius of the published covariance (square root of its largest eigenvalue)."""
        return sigma_radius_m(self.covariance_xy)

    def to_json(self) -> dict:
        return {"text": self.text, "hints": self.hints, "recognised_hints": self.recognised_hints,
                "position": [float(v) for v in self.best.position],
                "covariance_xy": self.covariance_xy.tolist(), "sigma_m": self.sigma_m,
                "hypotheses": [h.to_json() for h in self.hypotheses], "timing_ms": self.timing_ms}


@dataclass
class Candidates:
    """The coarse and fine outputs of B queries against their top K cells (tensors on the CPU)."""

    rows: torch.Tensor  # [B, K] gallery rows, best first
    scores: torch.Tensor  # [B, K] fused retrieval scores
    positions: torch.Tensor  # [B, K, 2] world x, y (m) of each hypothesis, float64
    precision: torch.Tensor  # [B, K] λ (ones for a model without the λ head)
    cell_size: torch.Tensor  # [B, K] metres
    cell_positions: Optional[torch.Tensor] = None  # [B, K, 2] the fine stage's own position in each cell
    agreeing: Optional[torch.Tensor] = None  # [B, K] cells whose positions agree with each (1 = alone)

    def __post_init__(self):
        if self.cell_positions is None:
            self.cell_positions = self.positions
        if self.agreeing is None:
            self.agreeing = torch.ones(self.rows.shape, dtype=torch.long)

    def reordered(self, c) -> "Candidates":
        """The same cells in the order of a :class:`~.consensus.Consensus`, at its positions."""
        from .consensus import reorder

        return Candidates(reorder(c.order, self.rows), reorder(c.order, self.scores), c.positions,
                          reorder(c.order, self.precision), reorder(c.order, self.cell_size),
                          reorder(c.order, self.cell_positions), c.agreeing)


def split_label(scenes: Sequence[str]) -> str:
    """The split whose scenes these are (names the cache files), else "map"."""
    from .data.constants import SPLITS, scene_short_name

    short = sorted(s if len(s) == 4 else scene_short_name(s) for s in scenes)
    for name, split_scenes in SPLITS.items():
        if sorted(s if len(s) == 4 else scene_short_name(s) for s in split_scenes) == short:
            return name
    return "map"


def load_calibration(weights) -> Calibration:
    """``weights/calibration.json`` if present (written by ``spatialoc eval --fit-calibration``)."""
    path = Path(weights) / CALIBRATION_FILE
    if not path.exists():
        return Calibration()
    try:
        return Calibration.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise SpatialocError(f"{path}: not a calibration file ({exc})") from None


def load_fine_model(weights, coarse_config: dict, device="cpu"):
    """The fine model of ``weights/fine``, checked against the coarse stage it will follow."""
    from .networks.checkpoint import load_checkpoint
    from .networks.ugfl import FineConfig, FineModel

    stem = Path(weights) / "fine"
    if not Path(f"{stem}.safetensors").exists():
        raise SpatialocError(f"{stem}.safetensors: no fine weights (train them with `spatialoc train fine`)")
    model, config = load_checkpoint(lambda cfg: FineModel(FineConfig.from_dict(cfg["architecture"])), stem)
    if config.get("text_encoder") != coarse_config.get("text_encoder"):
        raise SpatialocError(f"{stem}.json: the fine stage was trained with text encoder "
                             f"{config.get('text_encoder')!r}, the coarse stage with "
                             f"{coarse_config.get('text_encoder')!r}")
    digest = config.get("pointnet", {}).get("digest")
    if digest and digest != coarse_config.get("pointnet", {}).get("digest"):
        raise SpatialocError(f"{stem}.json: the fine stage was trained on other PointNet++ features "
                             f"(digest {digest}) than the coarse stage")
    return model.to(device).eval(), config


class Localizer:
    """Localize text in one map with one weights folder (ROS-free)."""

    def __init__(self, map_dir, weights="models", scenes: Optional[Sequence[str]] = None, device="auto",
                 cache=None, top_k: int = 10, max_chars: int = DEFAULT_MAX_CHARS,
                 max_hints: int = DEFAULT_MAX_HINTS, progress: bool = False):
        from .data.ground import GroundHeights
        from .data.kitti360pose import available_scenes, load_split
        from .data.show import resolve_scene
        from .evaluation.loading import load_coarse_stage
        from .evaluation.retrieval import GalleryScorer
        from .networks.text_encoder import FrozenTextEncoder
        from .training.runtime import pick_device
        from .training.text_cache import TextCache

        start = time.perf_counter()
        if not Path(map_dir).is_dir():
            raise SpatialocError(f"{map_dir}: no such map folder")
        available = available_scenes(map_dir)
        scenes = [resolve_scene(s, available) for s in scenes] if scenes else available
        if not scenes:
            raise SpatialocError(f"{map_dir}: no scene with both a cells and a poses file")
        for name in ("pointnet", "coarse", "fine"):  # before any slow work: say what is missing
            if not (Path(weights) / f"{name}.safetensors").exists():
                raise SpatialocError(f"{Path(weights) / name}.safetensors: no {name} weights in {weights}")
        self.device = pick_device(device)
        self.map = load_split(map_dir, scenes)
        self.weights = Path(weights)
        self.top_k, self.max_chars, self.max_hints = top_k, max_chars, max_hints
        self.coarse = load_coarse_stage(str(weights), str(map_dir), split_label(scenes), self.map.cells, None,
                                        cache=cache, device=self.device, progress=progress)
        self.fine, self.fine_config = load_fine_model(weights, self.coarse.config, self.device)
        self.calibration = load_calibration(weights)
        self.scorer = GalleryScorer(self.coarse.gallery.descriptors, self.coarse.score_terms)
        self.text = TextCache(FrozenTextEncoder(self.coarse.config["text_encoder"]))
        self.ground = GroundHeights()
        self.cells = [self.map.cells_by_id[i] for i in self.coarse.gallery.ids]  # gallery order
        self._cell_size = torch.tensor([c.cell_size for c in self.cells], dtype=torch.float64)
        self._origin = torch.tensor(np.stack([c.bbox_w[:2] for c in self.cells]), dtype=torch.float64)
        scene_names = sorted({c.scene for c in self.cells})  # consensus joins cells of one scene only
        self.scene_index = torch.tensor([scene_names.index(c.scene) for c in self.cells])
        self.build_s = time.perf_counter() - start

    @property
    def num_cells(self) -> int:
        return len(self.cells)

    # --- one query ------------------------------------------------------------------------

    def localize(self, text, top_k: Optional[int] = None) -> Localization:
        """Hypotheses for one description, best first; raises QueryRejected for unusable text."""
        from .networks.text_encoder import split_sentences

        t0 = time.perf_counter()
        text = check_text(text, self.max_chars)
        hints = check_hints(split_sentences(text), self.max_hints)
        self.encode_sentences(hints)
        t1 = time.perf_counter()
        timing = {"text": 1e3 * (t1 - t0)}
        cand = self.candidates([hints], top_k or self.top_k, timing)
        known = recognised_hints(hints)
        informative = torch.tensor([known / len(hints)])
        hyps, cov = self.hypotheses(self.consensus(cand, informative), informative)[0]
        timing["total"] = 1e3 * (time.perf_counter() - t0)
        return Localization(text, hints, hyps, cov, known, timing)

    def encode_sentences(self, sentences: Sequence[str]) -> None:
        """Token embeddings of sentences not seen before (the cache is bounded)."""
        if len(self.text) > MAX_CACHED_SENTENCES:
            from .training.text_cache import TextCache

            self.text = TextCache(self.text.encoder)
        self.text.add(list(sentences))

    # --- batches of queries (evaluation) ----------------------------------------------------

    @torch.inference_mode()
    def candidates(self, hint_lists: Sequence[Sequence[str]], top_k: int,
                   timing: Optional[dict] = None) -> Candidates:
        """Top-k cells of each query and the fine stage's position and precision in each."""
        from .training.text_batches import text_batch

        t0 = time.perf_counter()
        k = min(top_k, self.num_cells)
        batch = {n: v.to(self.device) for n, v in text_batch(self.text, hint_lists).items()}
        query = self.coarse.model.encode_text(**batch)
        query = CoarseOutputs(**{n: None if v is None else v.cpu() for n, v in vars(query).items()})
        scores, rows = self.scorer(query).topk(k, dim=1)                          # [B, K]
        t1 = time.perf_counter()
        b = len(hint_lists)
        text_k = dict(batch, hint_index=batch["hint_index"].repeat_interleave(k, 0),
                      hint_mask=batch["hint_mask"].repeat_interleave(k, 0))
        cells = {n: v.to(self.device) for n, v in self.coarse.bank.batch(rows.reshape(-1)).items()}
        out = self.fine(text_k, cells)
        offset = out.offset.double().cpu().reshape(b, k, 2)
        precision = (out.precision.float().cpu().reshape(b, k) if out.precision is not None
                     else torch.ones(b, k))
        size = self._cell_size[rows]
        positions = self._origin[rows] + (0.5 + offset) * size.unsqueeze(-1)
        if timing is not None:
            timing["coarse"] = 1e3 * (t1 - t0)
            timing["fine"] = 1e3 * (time.perf_counter() - t1)
        return Candidates(rows, scores, positions, precision, size)

    def consensus(self, cand: Candidates, informative: Optional[torch.Tensor] = None) -> Candidates:
        """The candidates in the order of the calibration's consensus, the best at its mode.

        Unchanged (retrieval order, each cell's own position) without a fitted consensus.
        ``informative`` [B]: the share of each query's sentences that name a known class or colour.
        """
        from .consensus import consensus_order

        cal = self.calibration
        if cal.consensus_bandwidth_m <= 0:
            return cand
        scores = informative_scores(cand.scores.double(), informative)
        return cand.reordered(consensus_order(cand.cell_positions, scores, cal.consensus_beta,
                                              cal.consensus_bandwidth_m, self.scene_index[cand.rows]))

    def covariances(self, cand: Candidates, informative: Optional[torch.Tensor] = None):
        """(own variance per hypothesis [B, K] in m², published covariance [B, 2, 2] about the best).

        ``informative`` [B]: the share of each query's sentences that name a known class or colour.
        """
        var = hypothesis_variance(cand.precision.double(), cand.cell_size, self.calibration.scale)
        cov = published_covariance(cand.cell_positions, cand.scores.double(), cand.precision.double(),
                                   cand.cell_size, self.calibration, informative, centre=cand.positions[:, 0])
        return var, cov

    def hypotheses(self, cand: Candidates, informative: Optional[torch.Tensor] = None):
        """Per query: (hypotheses best first, published covariance [2, 2])."""
        var, cov = self.covariances(cand, informative)
        out = []
        for b in range(cand.rows.shape[0]):
            hyps = []
            for r, row in enumerate(cand.rows[b].tolist()):
                cell = self.cells[row]
                xy = cand.positions[b, r].numpy()
                lam = float(cand.precision[b, r]) if self.fine.cfg.precision_head else float("nan")
                hyps.append(Hypothesis(r, cell.id, cell.scene, float(cand.scores[b, r]),
                                       np.array([xy[0], xy[1], self.ground(cell, xy)]),
                                       np.eye(2) * float(var[b, r]), lam, int(cand.agreeing[b, r])))
            out.append((hyps, cov[b].numpy()))
        return out
