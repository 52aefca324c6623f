"""The full pipeline without ROS: a map and a weights folder -> ``localize(text)`` -> hypotheses.

    text ─ check, split into sentences ─ token embeddings (frozen encoder, cached per sentence)
         ─ coarse stage: text descriptors, fused score against every cell (gallery precomputed)
         ─ top-k cells ─ fine stage (UGFL) on each: offset δ from the cell centre, precision λ
         ─ consensus of overlapping cells (:mod:`.core.consensus`): order and best position
         ─ world positions (+ ground height), covariances (:mod:`.core.covariance`)

The map comes from a map source (:mod:`.core.map_source`; today a KITTI360Pose
folder, all its scenes or those named), the models from one weights bundle
(:mod:`.core.weights`), the top-k cells from a retriever (:mod:`.core.retriever`).
The gallery (cell bank of frozen PointNet++ features and coarse descriptors) is
built on the first start and cached on disk, keyed by the cells' content and the
weights; later starts load it. Each stage is timed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .core.covariance import (hypothesis_variance, informative_scores, published_covariance,
                              sigma_radius_m)
from .networks.outputs import CoarseOutputs
from .core.language import (LanguageFrontEnd, Reading, Understanding, canonical_sentences,
                            read_texts)
from .core.map_source import cell_ids
from .core.query_text import DEFAULT_MAX_CHARS, DEFAULT_MAX_HINTS, check_text

MAX_CACHED_SENTENCES = 50_000  # the in-memory token cache starts over beyond this


@dataclass
class Hypothesis:
    """One candidate position: a retrieved cell refined by the fine stage."""

    rank: int  # 0 = best
    cell_id: str
    scene: str
    score: float  # fused retrieval score (sum of z-scores, see spatialoc_ros/core/retrieval.py)
    position: np.ndarray  # [3] world metres: x, y from the fine stage, z the ground height there
    covariance_xy: np.ndarray  # [2, 2] m², this hypothesis' own (calibrated) variance
    # λ of the fine stage, normalised cell units; nan for a model without the λ head
    precision: float
    # top-k cells whose positions agree on this place (:mod:`.core.consensus`), itself included
    agreeing: int = 1
    # probability of being within 10 m of the truth (:mod:`.core.confidence`); nan: not fitted
    probability: float = float("nan")

    def to_json(self) -> dict:
        return {"rank": self.rank, "cell_id": self.cell_id, "scene": self.scene,
                "score": self.score,
                "position": [float(v) for v in self.position],
                "covariance_xy": self.covariance_xy.tolist(), "precision": self.precision,
                "agreeing_cells": self.agreeing,
                "probability": None if np.isnan(self.probability) else self.probability}


@dataclass
class Localization:
    """The answer to one query: hypotheses best first, the published covariance, timing."""

    text: str
    hints: List[str]
    hypotheses: List[Hypothesis]
    covariance_xy: np.ndarray  # [2, 2] m² about the best position: fine variance + retrieval doubt
    recognised_hints: int  # hints the language front end understood
    timing_ms: Dict[str, float] = field(default_factory=dict)
    # what the front end understood, clause by clause (:mod:`.core.language`)
    understanding: Optional[Understanding] = None

    @property
    def understood(self) -> float:
        """Share of the description understood (0..1); it widens the published covariance."""
        return self.understanding.understood if self.understanding is not None else 1.0

    @property
    def best(self) -> Hypothesis:
        return self.hypotheses[0]

    @property
    def probability(self) -> float:
        """The answer's probability of being within 10 m of the truth (nan: not fitted)."""
        return self.best.probability

    @property
    def sigma_m(self) -> float:
        """1-sigma radius of the published covariance (square root of its largest eigenvalue)."""
        return sigma_radius_m(self.covariance_xy)

    def to_json(self) -> dict:
        return {"text": self.text, "hints": self.hints, "recognised_hints": self.recognised_hints,
                "understood": self.understood,
                "clauses": ([] if self.understanding is None
                            else self.understanding.to_json()["clauses"]),
                "position": [float(v) for v in self.best.position],
                "covariance_xy": self.covariance_xy.tolist(), "sigma_m": self.sigma_m,
                "probability": (None if np.isnan(self.probability) else self.probability),
                "hypotheses": [h.to_json() for h in self.hypotheses], "timing_ms": self.timing_ms}


@dataclass
class Candidates:
    """The coarse and fine outputs of B queries against their top K cells (tensors on the CPU)."""

    rows: torch.Tensor  # [B, K] gallery rows, best first
    scores: torch.Tensor  # [B, K] fused retrieval scores
    positions: torch.Tensor  # [B, K, 2] world x, y (m) of each hypothesis, float64
    precision: torch.Tensor  # [B, K] λ (ones for a model without the λ head)
    cell_size: torch.Tensor  # [B, K] metres
    # [B, K, 2] the fine stage's own position in each cell
    cell_positions: Optional[torch.Tensor] = None
    # [B, K] cells whose positions agree with each (1 = alone)
    agreeing: Optional[torch.Tensor] = None

    def __post_init__(self):
        if self.cell_positions is None:
            self.cell_positions = self.positions
        if self.agreeing is None:
            self.agreeing = torch.ones(self.rows.shape, dtype=torch.long)

    def reordered(self, c) -> "Candidates":
        """The same cells in the order of a :class:`~.consensus.Consensus`, at its positions."""
        from .core.consensus import reorder

        return Candidates(reorder(c.order, self.rows), reorder(c.order, self.scores), c.positions,
                          reorder(c.order, self.precision), reorder(c.order, self.cell_size),
                          reorder(c.order, self.cell_positions), c.agreeing)


class Localizer:
    """Localize text in one map with one weights folder (ROS-free).

    ``map_dir`` is a map folder (:func:`~.core.map_source.open_map`) or a
    :class:`~.core.map_source.MapSource`; ``weights`` a weights folder or a loaded
    :class:`~.core.weights.WeightsBundle`; ``retriever`` a name in
    :data:`~.core.retriever.RETRIEVERS`; ``cell_rows`` where the encoded cells are read from
    (:data:`~.core.map_store.CELL_ROWS`: ``memory``, ``store`` memory-mapped, ``auto`` the store
    above :data:`~.core.map_store.STORE_MIN_CELLS` cells).
    """

    def __init__(self, map_dir, weights="models", scenes: Optional[Sequence[str]] = None,
                 device="auto", cache=None, top_k: int = 10, max_chars: int = DEFAULT_MAX_CHARS,
                 max_hints: int = DEFAULT_MAX_HINTS, progress: bool = False,
                 retriever: str = "auto", retriever_options: Optional[dict] = None,
                 cell_rows: str = "auto"):
        from .core.cell_rows import MemoryCells
        from .core.coarse_stage import load_coarse_stage
        from .core.device import pick_device
        from .core.frozen_inputs import cache_dir
        from .core.map_store import load_or_build_map_store, use_store
        from .core.map_source import MapSource, cell_columns, cells_in_order, open_map
        from .core.retriever import make_retriever
        from .core.sentence_features import SentenceFeatures
        from .core.text_cache import TextCache
        from .core.weights import WeightsBundle
        from .data.ground import GroundHeights

        start = time.perf_counter()
        self.map = map_dir if isinstance(map_dir, MapSource) else open_map(map_dir, scenes)
        self.device = pick_device(device)
        self.top_k, self.max_chars, self.max_hints = top_k, max_chars, max_hints
        self.weights = (weights if isinstance(weights, WeightsBundle)
                        else WeightsBundle.load(weights, self.device))
        # the token embeddings of every hint sentence the language front end can produce are
        # encoded once (cached on disk with the gallery): an understood description never runs
        # the text encoder
        canonical = canonical_sentences()
        # a map above STORE_MIN_CELLS cells is served from a memory-mapped store of its encoded
        # cells (:mod:`.core.map_store`), a smaller one from its gallery and bank in memory
        stored = use_store(cell_rows, len(self.map.cells))
        self.coarse = load_coarse_stage(self.weights, str(self.map.path), self.map.name,
                                        self.map.cells, [canonical], cache=cache,
                                        progress=progress, encoded=not stored)
        self.fine, self.fine_config = self.weights.fine, self.weights.fine_config
        # its own copy: fitting (``spatialoc eval --fit-calibration``) sets it on this localizer
        self.calibration = replace(self.weights.calibration)
        if stored:
            self.rows = load_or_build_map_store(self.weights, self.map.cells,
                                                cache_dir(str(self.map.path), cache),
                                                self.map.name, progress)
            order = self.rows.ids
        else:
            self.rows = MemoryCells(self.coarse.gallery, self.coarse.bank)
            order = self.coarse.gallery.ids
        # what the encoded cells were computed from (the cache key of the bank or the store)
        self.cells_key = self.rows.key if stored else self.coarse.bank.key
        self.retriever = make_retriever(retriever, self.rows, self.weights.score_terms,
                                        **(retriever_options or {}))
        self.text = TextCache(self.weights.text_encoder(), base=self.coarse.text)
        self.language = LanguageFrontEnd(self.text.encoder)
        # and both stages' per-sentence hint features of those sentences
        self._sentences = (SentenceFeatures(self.coarse.model.hints, self.text, canonical,
                                            self.device),
                           SentenceFeatures(self.fine.hints, self.text, canonical, self.device))
        self.ground = GroundHeights()
        # the cells in gallery order (a built map's are read when a query asks for them)
        self.cells = cells_in_order(self.map, order)
        sizes, origins, scenes = cell_columns(self.cells)
        self._cell_size = torch.from_numpy(sizes)
        self._origin = torch.from_numpy(origins)
        # consensus joins cells of one scene only
        scene_names = sorted(set(scenes))
        number = {name: i for i, name in enumerate(scene_names)}
        self.scene_index = torch.tensor([number[s] for s in scenes])
        # the map's own rows, kept when :meth:`grow` adds others
        self._own = (self.rows, self._cell_size, self._origin, self.scene_index)
        self.build_s = time.perf_counter() - start

    def grow(self, extra, retriever: str = "two-stage", **options) -> float:
        """Serve the map's own cells followed by ``extra`` rows (a
        :class:`~.core.cell_store.CellStore`, e.g. distractor cells of other cities, each of its
        scenes a scene of its own), with a new retriever over them; returns the retriever's
        build time in seconds. Calling it again replaces the rows added before.

        The added rows have no point clouds: :meth:`candidates`, :meth:`consensus` and
        :meth:`published` serve them (the scale benchmark), :meth:`localize` does not."""
        from .core.cell_rows import StackedCells
        from .core.retriever import make_retriever

        rows, size, origin, scene = self._own
        self.rows, self._cell_size, self._origin, self.scene_index = rows, size, origin, scene
        if len(extra) > 0:
            def column(name, dtype):
                return torch.from_numpy(np.array(extra.column(name), dtype=dtype))

            self.rows = StackedCells([rows, extra])
            self._cell_size = torch.cat([size, column("cell_size", np.float64)])
            self._origin = torch.cat([origin, column("origin", np.float64)])
            self.scene_index = torch.cat([scene, column("scene", np.int64)
                                          + int(scene.max()) + 1])
        t0 = time.perf_counter()
        self.retriever = make_retriever(retriever, self.rows, self.weights.score_terms, **options)
        return time.perf_counter() - t0

    def cell_frames(self):
        """(cell corners [R, 2] m, cell sizes [R] m, scene ids [R]) of every gallery row, as
        served: each in its scene's frame, or where :meth:`shift_scenes` moved it."""
        return self._origin, self._cell_size, self.scene_index

    def shift_scenes(self, offsets: torch.Tensor) -> None:
        """Move every row of scene s by ``offsets[s]`` (m; [S, 2]): scenes with frames of their
        own laid out in one (:mod:`.evaluation.city_layout`). Positions only: what is
        retrieved and its scores do not change. Like the rows :meth:`grow` adds, the moved
        cells are for :meth:`candidates`, :meth:`consensus` and :meth:`published` (the map's
        points stay where they are, so not for :meth:`localize`); :meth:`grow` puts them
        back."""
        self._origin = self._origin + offsets.double()[self.scene_index]

    def rows_of(self, ids: Sequence[str]) -> torch.Tensor:
        """The gallery rows [M] of the map's cells ``ids``."""
        if getattr(self, "_row_of", None) is None:
            self._row_of = {cid: i for i, cid in enumerate(cell_ids(self.cells))}
        return torch.tensor([self._row_of[i] for i in ids], dtype=torch.long)

    @property
    def num_cells(self) -> int:
        """Cells in the gallery (the map's, and any rows added to it)."""
        return len(self.rows)

    # --- one query ------------------------------------------------------------------------

    def localize(self, text, top_k: Optional[int] = None) -> Localization:
        """Hypotheses for one description, best first; raises QueryRejected for unusable text."""
        t0 = time.perf_counter()
        text = check_text(text, self.max_chars)
        reading = self.read([text])[0]
        t_lang = time.perf_counter()
        self.encode_sentences(reading.hints)
        t1 = time.perf_counter()
        timing = {"language": 1e3 * (t_lang - t0), "text": 1e3 * (t1 - t0)}
        cand = self.candidates([reading.hints], top_k or self.top_k, timing)
        informative = torch.tensor([reading.informative])
        (hyps, cov), = self.hypotheses(self.consensus(cand, informative),
                                       torch.tensor([reading.evidence]), informative)
        timing["total"] = 1e3 * (time.perf_counter() - t0)
        return Localization(text, reading.hints, hyps, cov, len(reading.understanding.used),
                            timing, reading.understanding)

    def read(self, texts: Sequence[str]) -> List[Reading]:
        """The language front end's hints for each text (:func:`.core.language.read_texts`)."""
        return read_texts(self.language, texts, self.max_hints)

    def encode_sentences(self, sentences: Sequence[str]) -> None:
        """Token embeddings of sentences not seen before (the cache is bounded)."""
        if len(self.text) > MAX_CACHED_SENTENCES:
            self.text = self.text.fresh()
        self.text.add(list(sentences))

    def forget_queries(self) -> None:
        """Forget what earlier queries taught: the token embeddings of sentences outside the
        canonical table and the language front end's word matches (a cold start for timing)."""
        self.text = self.text.fresh()
        self.language.forget()

    # --- batches of queries (evaluation) ----------------------------------------------------

    @torch.inference_mode()
    def candidates(self, hint_lists: Sequence[Sequence[str]], top_k: int,
                   timing: Optional[dict] = None) -> Candidates:
        """Top-k cells of each query and the fine stage's position and precision in each."""
        from .core.text_cache import unique_hints

        t0 = time.perf_counter()
        k = min(top_k, self.num_cells)
        unique, index, mask = unique_hints(hint_lists)
        index, mask = index.to(self.device), mask.to(self.device)
        coarse_s, fine_s = (f.features(unique, self.text) for f in self._sentences)
        query = self.coarse.model.encode_text(None, None, index, mask, coarse_s)
        query = CoarseOutputs(**{n: None if v is None else v.cpu()
                                 for n, v in vars(query).items()})
        scores, rows = self.retriever.top_k(query, k)                             # [B, K]
        t1 = time.perf_counter()
        b = len(hint_lists)
        # the hints once per query, then paired with each of its K cells
        h, mask = self.fine.encode_text(None, None, index, mask, fine_s)
        cells = {n: v.to(self.device) for n, v in self.rows.bank_batch(rows.reshape(-1)).items()}
        o, object_mask = self.fine.encode_cells(**cells)
        out = self.fine.locate(h.repeat_interleave(k, 0), mask.repeat_interleave(k, 0), o,
                               object_mask)
        offset = out.offset.double().cpu().reshape(b, k, 2)
        precision = (out.precision.float().cpu().reshape(b, k) if out.precision is not None
                     else torch.ones(b, k))
        size = self._cell_size[rows]
        positions = self._origin[rows] + (0.5 + offset) * size.unsqueeze(-1)
        if timing is not None:
            timing["coarse"] = 1e3 * (t1 - t0)
            timing["fine"] = 1e3 * (time.perf_counter() - t1)
        return Candidates(rows, scores, positions, precision, size)

    def consensus(self, cand: Candidates,
                  informative: Optional[torch.Tensor] = None) -> Candidates:
        """The candidates in the order of the calibration's consensus, the best at its mode.

        Unchanged (retrieval order, each cell's own position) without a fitted consensus.
        ``informative`` [B]: the share of each query the language front end understood.
        """
        from .core.consensus import consensus_order

        cal = self.calibration
        if cal.consensus_bandwidth_m <= 0:
            return cand
        scores = informative_scores(cand.scores.double(), informative)
        return cand.reordered(consensus_order(cand.cell_positions, scores, cal.consensus_beta,
                                              cal.consensus_bandwidth_m,
                                              self.scene_index[cand.rows]))

    def covariances(self, cand: Candidates, informative: Optional[torch.Tensor] = None):
        """(own variance per hypothesis [B, K] in m², published covariance [B, 2, 2] about the
        best).

        ``informative`` [B]: how far to trust each query's scores (a
        :attr:`~.core.language.Reading.evidence`: the share understood, fewer hints trusted less).
        """
        var = hypothesis_variance(cand.precision.double(), cand.cell_size, self.calibration.scale)
        cov = published_covariance(cand.cell_positions, cand.scores.double(),
                                   cand.precision.double(), cand.cell_size, self.calibration,
                                   informative, centre=cand.positions[:, 0])
        return var, cov

    def answer_features(self, cand: Candidates, evidence: Optional[torch.Tensor] = None,
                        informative: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Features [B, F] of each query's answer (:func:`.core.confidence.answer_features`) from
        its consensus-ordered candidates."""
        from .core.confidence import answer_features

        evidence = torch.ones(cand.rows.shape[0]) if evidence is None else evidence
        return answer_features(informative_scores(cand.scores.double(), informative),
                               cand.positions, self.scene_index[cand.rows], cand.precision,
                               cand.agreeing, evidence, self.num_cells)

    def published(self, cand: Candidates, evidence: Optional[torch.Tensor] = None,
                  informative: Optional[torch.Tensor] = None):
        """(own variance per hypothesis [B, K] m², published covariance [B, 2, 2], probability
        per hypothesis [B, K] or None) of consensus-ordered candidates.

        With a fitted probability model (:mod:`.core.confidence`) every hypothesis gets its
        probability of being within 10 m of the truth, and the covariance its far term.
        """
        from .core.confidence import ProbabilityModel, hypothesis_probabilities
        from .core.confidence import inflate_covariance
        from .core.covariance import mixture_weights

        var, cov = self.covariances(cand, evidence)
        model = ProbabilityModel.from_dict(self.calibration.probability)
        if model is None:
            return var, cov, None
        p = model.probability(self.answer_features(cand, evidence, informative))
        weights = mixture_weights(informative_scores(cand.scores.double(), evidence),
                                  self.calibration.beta)
        return (var, inflate_covariance(cov, p, model.far_variance_m2, model.far_power),
                hypothesis_probabilities(p, weights))

    def hypotheses(self, cand: Candidates, evidence: Optional[torch.Tensor] = None,
                   informative: Optional[torch.Tensor] = None):
        """Per query: (hypotheses best first, published covariance [2, 2]).

        ``evidence`` [B]: how far to trust each query (:attr:`~.core.language.Reading.evidence`);
        ``informative`` [B]: the share understood, as the consensus weighed the scores. With a
        fitted probability model, every hypothesis carries its probability and the covariance
        its far term (:func:`.core.confidence.inflate_covariance`).
        """
        var, cov, prob = self.published(cand, evidence, informative)
        out = []
        for b in range(cand.rows.shape[0]):
            hyps = []
            for r, row in enumerate(cand.rows[b].tolist()):
                cell = self.cells[row]
                xy = cand.positions[b, r].numpy()
                lam = float(cand.precision[b, r]) if self.fine.cfg.precision_head else float("nan")
                hyps.append(Hypothesis(r, cell.id, cell.scene, float(cand.scores[b, r]),
                                       np.array([xy[0], xy[1], self.ground(cell, xy)]),
                                       np.eye(2) * float(var[b, r]), lam,
                                       int(cand.agreeing[b, r]),
                                       float("nan") if prob is None else float(prob[b, r])))
            out.append((hyps, cov[b].numpy()))
        return out
