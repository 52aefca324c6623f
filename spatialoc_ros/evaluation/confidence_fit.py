"""Fitting and checking the answer's probability of being right (:mod:`..core.confidence`).

The model is fitted on validation answers at several gallery sizes: the
validation gallery grown with distractor cells of other cities
(:mod:`.distractors`), so that it learns how a larger map lowers the chance
that the best-looking cell is the right one. Its reliability is reported as
the expected calibration error (ECE: the mean gap between predicted and
observed frequency over ten equal-width bins of p, weighted by bin size) and
the AUROC of telling right answers from wrong ones (the probability that a
random right answer gets a higher p than a random wrong one; ties count 1/2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..core.confidence import FEATURES, RIGHT_M, ProbabilityModel, inflate_covariance
from .localization import TARGET_1SIGMA, TARGET_2SIGMA, calibration_report, mahalanobis_sq

L2 = 1e-3  # ridge on the standardised weights: keeps the fit finite on separable data
ECE_BINS = 10


@dataclass
class Answers:
    """Published answers of a set of queries: what the model sees and what happened."""

    features: torch.Tensor  # [B, F] float64
    right: torch.Tensor  # [B] bool: within RIGHT_M of the truth, in its scene
    err_xy: torch.Tensor  # [B, 2] truth - answer (metres); inf for an answer in another scene
    cov: torch.Tensor  # [B, 2, 2] the mixture covariance of eq. (2), before the far term
    cells: torch.Tensor  # [B] gallery size of each answer
    # [B] the part of cov that scales with the calibration's ``scale`` (its isotropic fine
    # variance, sum_i w_i sigma_i²), so that cov at another scale s' is cov + (s'/s - 1) iso I
    iso: Optional[torch.Tensor] = None
    scale: float = 1.0  # the calibration scale cov was computed with

    @staticmethod
    def cat(parts: Sequence["Answers"]) -> "Answers":
        out = Answers(*(torch.cat([getattr(p, f) for p in parts])
                        for f in ("features", "right", "err_xy", "cov", "cells")))
        if all(p.iso is not None for p in parts):
            out.iso, out.scale = torch.cat([p.iso for p in parts]), parts[0].scale
        return out

    def cov_at(self, scale: float) -> torch.Tensor:
        """The mixture covariance with the fine variances at calibration ``scale``."""
        if self.iso is None or scale == self.scale:
            return self.cov
        extra = (scale / self.scale - 1.0) * self.iso
        return self.cov + extra[:, None, None] * torch.eye(2, dtype=self.cov.dtype)


def answers_of(loc, readings, ordered, truth: torch.Tensor, query_scene: torch.Tensor,
               offsets: Optional[torch.Tensor] = None) -> Answers:
    """The published answers of a batch of queries from their consensus-ordered candidates, as
    :meth:`~..inference.Localizer.published` computes them (the covariance before its far
    term). ``truth`` [B, 2] in each query's scene frame; ``offsets`` [S, 2]: the scenes laid out
    in one frame (:mod:`.city_layout`, already applied to ``loc``), so that an answer in another
    scene has an error; None: it has none (outside every ellipse)."""
    informative = torch.tensor([r.informative for r in readings], dtype=torch.float64)
    evidence = torch.tensor([r.evidence for r in readings], dtype=torch.float64)
    from ..core.covariance import informative_scores, mixture_weights

    feats = loc.answer_features(ordered, evidence, informative)
    var, cov = loc.covariances(ordered, evidence)
    weights = mixture_weights(informative_scores(ordered.scores.double(), evidence),
                              loc.calibration.beta)
    from .localization import elsewhere_errors

    best = ordered.positions[:, 0]
    same = loc.scene_index[ordered.rows[:, 0]] == query_scene
    if offsets is None:
        err = elsewhere_errors(truth - best, same)
    else:
        err = truth + offsets.double()[query_scene] - best
    right = same & (err.norm(dim=1) <= RIGHT_M)
    return Answers(feats, right, err, cov, torch.full((len(readings),), float(loc.num_cells)),
                   (weights * var).sum(1), loc.calibration.scale)


def collect_answers(loc, queries, progress: bool = True, batch: int = 64,
                    offsets: Optional[torch.Tensor] = None) -> Answers:
    """Answers of ``queries`` (poses with text, scene, pose_w) in ``loc``'s current gallery
    (``offsets``: its scenes laid out in one frame, see :func:`answers_of`)."""
    from tqdm import tqdm

    readings = loc.read([q.text for q in queries])
    hints = [r.hints for r in readings]
    loc.encode_sentences(sorted({s for h in hints for s in h}))
    scene_of = {}
    for row, cell in enumerate(loc.cells):
        scene_of.setdefault(cell.scene, int(loc.scene_index[row]))
    parts = []
    for start in tqdm(range(0, len(queries), batch), desc=f"answers at {loc.num_cells} cells",
                      unit="batch", disable=not progress):
        sl = slice(start, start + batch)
        cand = loc.candidates(hints[sl], loc.top_k)
        informative = torch.tensor([r.informative for r in readings[sl]], dtype=torch.float64)
        ordered = loc.consensus(cand, informative)
        truth = torch.tensor(np.stack([q.pose_w[:2] for q in queries[sl]]), dtype=torch.float64)
        scene = torch.tensor([scene_of.get(q.scene, -1) for q in queries[sl]])
        parts.append(answers_of(loc, readings[sl], ordered, truth, scene, offsets))
    return Answers.cat(parts)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = L2):
    """(weights [F], bias, mean [F], std [F]) of a ridge logistic regression of y on x."""
    x = x.double()
    mean, std = x.mean(0), x.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, tolerance_grad=1e-10,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")
    target = y.double()

    def closure():
        opt.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, target)
                + l2 * (w * w).sum())
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), float(b.detach()), mean, std


def fit_far_variance(answers: Answers, probability: torch.Tensor,
                     scale: Optional[float] = None, power: float = 1.0) -> float:
    """V_far (m²) whose inflated covariances hold 86.5 % of the errors in 2 sigma (bisection in
    log space; coverage grows with V_far). 0 when the mixture alone already holds that many.
    ``scale``: the calibration scale of the fine variances (default: the answers' own)."""
    base = answers.cov_at(answers.scale if scale is None else scale)

    def coverage(v: float) -> float:
        cov = inflate_covariance(base, probability, v, power)
        return float((mahalanobis_sq(answers.err_xy.double(), cov) <= 4).double().mean())

    if coverage(0.0) >= TARGET_2SIGMA:
        return 0.0
    lo, hi = -2.0, 14.0  # log10 m²
    if coverage(10 ** hi) < TARGET_2SIGMA:
        return 10 ** hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if coverage(10 ** mid) < TARGET_2SIGMA else (lo, mid)
    return 10 ** hi


def fit_probability(answers: Answers, fitted_on: str = "") -> ProbabilityModel:
    """The logistic model of p and V_far at the answers' own calibration scale."""
    w, b, mean, std = fit_logistic(answers.features, answers.right)
    model = ProbabilityModel(w.tolist(), b, mean.tolist(), std.tolist(), fitted_on=fitted_on)
    model.far_variance_m2 = fit_far_variance(answers, model.probability(answers.features))
    return model


# steep powers make the far term a soft threshold: answers the model doubts get an ellipse the
# size of the map, sure ones keep their own
FAR_POWERS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


LOG_SCALES = tuple(x / 20.0 for x in range(-40, 41))  # log10 of scale / the answers' own
LOG_VARIANCES = tuple(x / 10.0 for x in range(0, 121))  # log10 V_far in m² (and 0)


def _grid(answers: Answers, model: ProbabilityModel, log_scales: Sequence[float],
          powers: Sequence[float], log_variances: Sequence[float]):
    """Every covariance of the family Sigma(scale) + (1 - p)^gamma V_far I on the grid:
    yields (scale, gamma, V_far, covariances [B, 2, 2], share inside 1 sigma, inside 2,
    squared Mahalanobis distances [B])."""
    p = model.probability(answers.features).double()
    err = answers.err_xy.double()
    variances = [0.0] + [10 ** x for x in log_variances]
    for log_scale in log_scales:
        scale = answers.scale * 10 ** log_scale
        base = answers.cov_at(scale)
        for power in powers:
            for v in variances:
                cov = inflate_covariance(base, p, v, power)  # as published (and bounded)
                d2 = mahalanobis_sq(err, cov)
                yield (scale, power, v, cov, float((d2 <= 1).double().mean()),
                       float((d2 <= 4).double().mean()), d2)


OBJECTIVES = ("cautious", "balanced")


def fit_scale_and_far_variance(answers: Answers, model: ProbabilityModel,
                               log_scales: Sequence[float] = LOG_SCALES,
                               powers: Sequence[float] = FAR_POWERS,
                               log_variances: Sequence[float] = LOG_VARIANCES,
                               objective: str = "cautious") -> float:
    """The calibration scale (fine variances), gamma and V_far of the published covariances;
    sets ``model.far_variance_m2`` and ``model.far_power`` and returns the scale.

    With a far term for the wrong answers, the fine variances no longer need to cover them: the
    scale fitted without it (eq. (1) of :mod:`..core.covariance`) is too wide for the right
    answers. A grid search: scale over log10 steps of 0.05 around the answers' own, gamma in
    :data:`FAR_POWERS`, V_far from 1 m² to 1e12 m² in log10 steps of 0.1 (and 0).

    A Gaussian per answer cannot hold 39.3 % of the errors inside 1 sigma and 86.5 % inside 2
    when about one answer in ten is tens to thousands of metres off and the probability does not
    single those out (:func:`coverage_frontier` measures how far apart the two are). The
    ``objective`` says which side gives:

    * ``cautious`` (default): never over-confident. Among the covariances that hold at least
      86.5 % of the errors inside 2 sigma at every gallery size of the answers, the one whose
      1-sigma shares are nearest 39.3 % (mean squared miss over the sizes), the mean negative
      log-likelihood breaking near-ties. Where both cannot be met, its 1-sigma ellipses hold
      more than 39.3 %: the right answers' ellipses are wider than their errors. (If none
      reaches 86.5 % everywhere: the largest smallest 2-sigma share.)
    * ``balanced``: the smallest squared miss of both shares over all answers, the NLL breaking
      near-ties (as :func:`.localization.fit_calibration`); it gives up 2-sigma coverage for
      1-sigma, i.e. over-confident ellipses for the wrong answers.
    """
    from .localization import mean_nll

    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {OBJECTIVES}")
    err = answers.err_xy.double()
    sizes = [answers.cells == n for n in torch.unique(answers.cells)]
    best = None
    for scale, power, v, cov, c1, c2, d2 in _grid(answers, model, log_scales, powers,
                                                  log_variances):
        if objective == "balanced":
            rank = (round((c1 - TARGET_1SIGMA) ** 2 + (c2 - TARGET_2SIGMA) ** 2, 5),)
        else:
            low2 = min(float((d2[at] <= 4).double().mean()) for at in sizes)
            miss1 = sum((float((d2[at] <= 1).double().mean()) - TARGET_1SIGMA) ** 2
                        for at in sizes) / len(sizes)
            # covariances that hold 86.5 % everywhere come first, those nearest 39.3 % inside
            # 1 sigma first among them
            rank = ((0, round(miss1, 5)) if low2 >= TARGET_2SIGMA - 1e-9
                    else (1, -round(low2, 4)))
        if best is not None and rank > best[0][:-1]:
            continue
        key = rank + (mean_nll(err, cov),)
        if best is None or key < best[0]:
            best = (key, scale, v, power)
    _, scale, v, power = best
    model.far_variance_m2, model.far_power = v, power
    return scale


def coverage_frontier(answers: Answers, model: ProbabilityModel,
                      log_scales: Sequence[float] = LOG_SCALES[::2],
                      powers: Sequence[float] = FAR_POWERS,
                      log_variances: Sequence[float] = LOG_VARIANCES[::2]) -> Dict[str, float]:
    """What the covariance family can reach on these answers at all: the largest share inside
    2 sigma among the grid's covariances holding at most 39.3 % + 1 point inside 1 sigma, and
    the smallest share inside 1 sigma among those holding at least 86.5 % - 1 point inside 2
    (nan where none does). Both targets within reach make the first about 0.865 and the
    second about 0.393."""
    best2, best1 = -math.inf, math.inf
    for _, _, _, _, c1, c2, _ in _grid(answers, model, log_scales, powers, log_variances):
        if c1 <= TARGET_1SIGMA + 0.01:
            best2 = max(best2, c2)
        if c2 >= TARGET_2SIGMA - 0.01:
            best1 = min(best1, c1)
    return {"best_2sigma_at_1sigma_target": best2 if math.isfinite(best2) else math.nan,
            "best_1sigma_at_2sigma_target": best1 if math.isfinite(best1) else math.nan}


def expected_calibration_error(p: torch.Tensor, right: torch.Tensor,
                               bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-width bins of p (see the module docstring)."""
    p, y = p.double(), right.double()
    which = (p * bins).long().clamp(0, bins - 1)
    total = 0.0
    for i in range(bins):
        at = which == i
        if at.any():
            total += float(at.double().mean()) * abs(float(p[at].mean()) - float(y[at].mean()))
    return total


def auroc(p: torch.Tensor, right: torch.Tensor) -> float:
    """Probability that a right answer outranks a wrong one (ties 1/2); nan without both."""
    p = p.double().numpy()
    y = right.numpy().astype(bool)
    pos, neg = p[y], p[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    values = np.concatenate([pos, neg])[order]
    ranks = np.empty(len(values))
    # average ranks over ties
    start = 0
    while start < len(values):
        stop = start
        while stop + 1 < len(values) and values[stop + 1] == values[start]:
            stop += 1
        ranks[start:stop + 1] = 0.5 * (start + stop) + 1.0
        start = stop + 1
    rank_of = np.empty(len(values))
    rank_of[order] = ranks
    pos_ranks = rank_of[:len(pos)].sum()
    return float((pos_ranks - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def reliability(p: torch.Tensor, right: torch.Tensor) -> Dict[str, float]:
    """ECE, AUROC, Brier score, mean p and the observed share of right answers."""
    return {"ece": expected_calibration_error(p, right), "auroc": auroc(p, right),
            "brier": float(((p.double() - right.double()) ** 2).mean()),
            "mean_probability": float(p.double().mean()),
            "right_share": float(right.double().mean())}


def check(model: ProbabilityModel, answers: Answers,
          scale: Optional[float] = None) -> Dict[str, object]:
    """Reliability of p, and the coverage of the covariance with and without the far term
    (fine variances at calibration ``scale``, default the answers' own)."""
    p = model.probability(answers.features)
    base = answers.cov_at(answers.scale if scale is None else scale)
    inflated = inflate_covariance(base, p, model.far_variance_m2, model.far_power)
    return {"probability": reliability(p, answers.right),
            "covariance": calibration_report(answers.err_xy.double(), inflated),
            "covariance_without_far_term": calibration_report(answers.err_xy.double(),
                                                              answers.cov.double())}


def feature_table(model: ProbabilityModel) -> List[str]:
    return [f"{name:>14}: weight {w:+.3f} (per std {s:.3g})"
            for name, w, s in zip(FEATURES, model.weights, model.std)]


def fit_probability_on_val(data: str, weights: str, sizes: Sequence[int], cache=None,
                           progress: bool = True, shortlist: int = 256, frames: str = "city",
                           objective: str = "cautious") -> dict:
    """Fit the probability model on the validation queries with the validation gallery grown to
    each of ``sizes`` cells (two-stage retrieval), write it into WEIGHTS/calibration.json and
    return its report per size.

    ``frames``: ``city`` lays the gallery's scenes out as districts of one frame
    (:mod:`.city_layout`), as a robot's map is: an answer in another scene is kilometres off and
    the far term is fitted to hold it; ``separate`` keeps the benchmark's frame per scene (such
    an answer is outside every ellipse). ``objective``: see :func:`fit_scale_and_far_variance`.
    """
    from pathlib import Path

    from ..atomic import write_json
    from ..core.weights import CALIBRATION_FILE
    from ..data.constants import SPLITS
    from ..errors import SpatialocError
    from ..inference import Localizer
    from .city_layout import check_frames, district_offsets
    from .scale import distractor_store

    check_frames(frames)
    loc = Localizer(data, weights, scenes=list(SPLITS["val"]), cache=cache, device="cpu",
                    progress=progress)
    base = loc.num_cells
    sizes = sorted({max(int(n), base) for n in sizes})
    if not sizes:
        raise SpatialocError("--fit-probability needs at least one gallery size")
    queries = loc.map.poses
    store = distractor_store(loc, data, sizes[-1] - base, cache, progress)
    parts = []
    for n in sizes:
        path = _answers_path(loc, data, weights, cache, n, shortlist, frames)
        part = _load_answers(path)
        if part is None:
            loc.grow(store.head(n - base), "two-stage", shortlist=shortlist)
            offsets = None
            if frames == "city":
                offsets = district_offsets(*loc.cell_frames())
                loc.shift_scenes(offsets)
            part = collect_answers(loc, queries, progress, offsets=offsets)
            _save_answers(path, part)
        parts.append(part)
    answers = Answers.cat(parts)
    frame = ("scenes laid out as districts of one frame" if frames == "city"
             else "a frame per scene")
    model = fit_probability(answers, fitted_on=(
        f"val: {len(queries)} queries at gallery sizes {', '.join(str(n) for n in sizes)} "
        f"(validation cells + distractor cells of other cities; {frame}; {objective} "
        f"coverage)"))
    before = {"scale": loc.calibration.scale,
              "by_gallery_size": {str(n): check(model, part)["covariance_without_far_term"]
                                  for n, part in zip(sizes, parts)}}
    scale = fit_scale_and_far_variance(answers, model, objective=objective)
    loc.calibration.scale = scale
    loc.calibration.probability = model.to_dict()
    path = Path(weights) / CALIBRATION_FILE
    write_json(path, loc.calibration.to_dict())
    per_size = {str(n): check(model, part, scale) for n, part in zip(sizes, parts)}
    for n, part in zip(sizes, parts):
        per_size[str(n)]["frontier"] = coverage_frontier(part, model)
    return {"calibration_file": str(path), "probability_model": model.to_dict(),
            "scale": scale, "without_probability": before,
            "fit": check(model, answers, scale), "by_gallery_size": per_size}


def far_term_line(model: ProbabilityModel) -> str:
    """What the far term (1 - p)^gamma V_far does, in words: where it reaches the published
    bound (:data:`..core.covariance.MAX_VARIANCE_M2`) and its sigma at p = 0.5."""
    from ..core.covariance import MAX_VARIANCE_M2

    v, power = model.far_variance_m2, model.far_power
    line = f"far term (1 - p)^{power:g} x {v:.4g} m²"
    if v <= 0:
        return line + ": none"
    half = min(0.5 ** power * v, MAX_VARIANCE_M2) ** 0.5
    if v > MAX_VARIANCE_M2:
        p_bound = 1.0 - (MAX_VARIANCE_M2 / v) ** (1.0 / power)
        line += (f": the published bound {MAX_VARIANCE_M2:.0e} m² (sigma "
                 f"{MAX_VARIANCE_M2 ** 0.5 / 1e3:.0f} km) below p = {p_bound:.2f}")
    return line + f", sigma {half:.0f} m at p = 0.5"


def format_probability_report(report: dict) -> str:
    model = ProbabilityModel.from_dict(report["probability_model"])
    lines = [f"probability of an answer within {RIGHT_M:.0f} m, fitted on {model.fitted_on}"]
    lines += feature_table(model)
    lines.append(far_term_line(model))
    lines.append(f"calibration scale {report['scale']:.4g} (was "
                 f"{report['without_probability']['scale']:.4g} without the far term)")
    lines.append(f"{'cells':>8} {'right':>6} {'mean p':>7} {'ECE':>6} {'AUROC':>6} "
                 f"{'1/2 sigma %':>12} {'before':>17}")
    before = report["without_probability"]["by_gallery_size"]
    for n, r in report["by_gallery_size"].items():
        p, c, c0 = r["probability"], r["covariance"], before[n]
        lines.append(f"{int(n):>8} {p['right_share']:6.3f} {p['mean_probability']:7.3f} "
                     f"{p['ece']:6.3f} {p['auroc']:6.3f} "
                     f"{100 * c['within_1sigma']:5.1f}/{100 * c['within_2sigma']:4.1f}  "
                     f"{100 * c0['within_1sigma']:10.1f}/{100 * c0['within_2sigma']:4.1f}")
    lines.append("what the covariance family can reach (the grid of the fit): best 2-sigma share "
                 "holding <= 40.3 % inside 1 sigma; best 1-sigma share holding >= 85.5 % in 2")
    for n, r in report["by_gallery_size"].items():
        f = r.get("frontier")
        if f:
            lines.append(f"{int(n):>8} {100 * f['best_2sigma_at_1sigma_target']:6.1f} % "
                         f"{100 * f['best_1sigma_at_2sigma_target']:6.1f} %")
    lines.append(f"wrote {report['calibration_file']}")
    return "\n".join(lines)


_ANSWER_FIELDS = ("features", "right", "err_xy", "cov", "cells", "iso")
# 2: an answer in another scene has an infinite error (it was truth - answer across frames)
ANSWERS_FORMAT = "answers-2"


def _answers_path(loc, data, weights, cache, cells: int, shortlist: int,
                  frames: str = "city"):
    """Where the answers at one gallery size are cached: keyed by everything they come from
    (weights' bytes, the calibration without its probability model, the distractors, the
    queries' cells)."""
    import hashlib
    import json
    from pathlib import Path

    from ..core.frozen_inputs import cache_dir
    from ..digest import file_digest
    from .distractors import distractor_key

    # not the scale: the answers keep theirs, and :meth:`Answers.cov_at` moves them to another
    cal = {k: v for k, v in loc.calibration.to_dict().items()
           if k not in ("probability", "scale", "fitted_on")}
    parts = [ANSWERS_FORMAT, file_digest(loc.weights.coarse_weights, 64), loc.cells_key,
             distractor_key(loc.weights), json.dumps(cal, sort_keys=True), str(cells),
             str(shortlist), str(loc.top_k), str(len(loc.map.poses)), frames]
    parts.append(file_digest(Path(weights) / "fine.safetensors", 64))
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return cache_dir(data, cache) / f"answers-{key}.safetensors"


def _save_answers(path, answers: Answers) -> None:
    from ..core.cache_files import save_tensors

    tensors = {f: getattr(answers, f).contiguous() for f in _ANSWER_FIELDS}
    tensors["right"] = tensors["right"].to(torch.uint8)
    save_tensors(path, tensors, {"scale": answers.scale})


def _load_answers(path) -> Optional[Answers]:
    from ..core.cache_files import load_tensors

    loaded = load_tensors(path, "answers")
    if loaded is None:
        return None
    t, meta = loaded
    return Answers(t["features"], t["right"].bool(), t["err_xy"], t["cov"], t["cells"], t["iso"],
                   float(meta["scale"]))
