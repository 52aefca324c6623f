"""Localization recall (the papers' protocol) and the calibration of the published covariance.

Localization recall at (k, eps), as SpatiaLoc (arXiv 2601.03579) reports it in
Tables 1 and 3 (README.md, "Training and evaluation", describes the protocol):
a query is a hit if the smallest 2-D error over its first k candidates is at
most eps metres; candidates from another scene than the query's are misses.

Calibration (ours; no paper reports it): the top-1 error e and the published
covariance Sigma give the squared Mahalanobis distance d² = e^T Sigma^-1 e. For
a calibrated 2-D Gaussian, P(d² <= 1) = 1 - exp(-1/2) = 39.3 % (inside the
1-sigma ellipse) and P(d² <= 4) = 1 - exp(-2) = 86.5 % (2-sigma). The mean
negative log-likelihood is also reported.

An answer in another scene than the query's (another drive of the benchmark,
or another city's distractor cell) has no error in the query's frame: its
error is given as non-finite, and it lies outside every ellipse (d² = inf).
The mean NLL is over the answers with a finite error; ``elsewhere`` is the
share of the others.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..core.covariance import (Calibration, hypothesis_variance, mixture_covariance,
                               mixture_weights, published_covariance)

LOCALIZATION_KS = (1, 5, 10)
THRESHOLDS_M = (5, 10, 15)
TARGET_1SIGMA = 1 - math.exp(-0.5)
TARGET_2SIGMA = 1 - math.exp(-2.0)


def candidate_errors(positions: torch.Tensor, same_scene: torch.Tensor,
                     truth_xy: torch.Tensor) -> torch.Tensor:
    """Errors [B, K] in metres of candidate positions [B, K, 2]; inf where the scene differs."""
    err = torch.linalg.norm(positions - truth_xy[:, None, :], dim=-1)
    return err.masked_fill(~same_scene, float("inf"))


def localization_recall(errors: torch.Tensor, ks: Sequence[int] = LOCALIZATION_KS,
                        thresholds: Sequence[float] = THRESHOLDS_M) -> Dict[str, Dict[str, float]]:
    """{"k": {"eps": recall}} from candidate errors [B, K] (best candidate first)."""
    out = {}
    for k in ks:
        best = errors[:, :k].min(dim=1).values
        out[str(k)] = {str(e): float((best <= e).double().mean()) for e in thresholds}
    return out


def mahalanobis_sq(err_xy: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """d² [B] of errors [B, 2] under covariances [B, 2, 2]; inf for a non-finite error (an
    answer in another scene)."""
    finite = torch.isfinite(err_xy).all(dim=-1)
    e = torch.where(finite[:, None], err_xy, torch.zeros_like(err_xy))
    sol = torch.linalg.solve(cov, e.unsqueeze(-1)).squeeze(-1)
    return ((e * sol).sum(-1)).masked_fill(~finite, math.inf)


def gaussian_nll(err_xy: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood [B] of errors under zero-mean 2-D Gaussians (inf where the error
    is not finite)."""
    return 0.5 * mahalanobis_sq(err_xy, cov) + math.log(2 * math.pi) + 0.5 * torch.logdet(cov)


def mean_nll(err_xy: torch.Tensor, cov: torch.Tensor) -> float:
    """The mean NLL over the errors that are finite (nan when none is)."""
    nll = gaussian_nll(err_xy, cov)
    finite = torch.isfinite(err_xy).all(dim=-1)
    return float(nll[finite].mean()) if bool(finite.any()) else math.nan


def elsewhere_errors(err_xy: torch.Tensor, same_scene: Optional[torch.Tensor]) -> torch.Tensor:
    """Errors [B, 2] with those of answers in another scene (``same_scene`` [B] False) set to
    inf: no error in the query's frame, outside every ellipse."""
    if same_scene is None:
        return err_xy
    return err_xy.masked_fill(~same_scene.reshape(-1, 1).to(torch.bool), math.inf)


def calibration_report(err_xy: torch.Tensor, cov: torch.Tensor) -> Dict[str, float]:
    """Coverage of the 1- and 2-sigma ellipses, mean NLL, median 1-sigma radius and the share of
    answers elsewhere (the ``calibration`` JSON object; see the module docstring)."""
    d2 = mahalanobis_sq(err_xy, cov)
    return {"within_1sigma": float((d2 <= 1).double().mean()),
            "within_2sigma": float((d2 <= 4).double().mean()),
            "nll": mean_nll(err_xy, cov),
            "median_sigma_m": float(torch.linalg.eigvalsh(cov)[:, -1].sqrt().median()),
            "elsewhere": float((~torch.isfinite(err_xy).all(dim=-1)).double().mean())}


COVERAGE_TOLERANCE = 0.05  # a fitted coverage this close to 39.3 % / 86.5 % counts as calibrated
FIT_BETAS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0)


def fit_calibration(positions: torch.Tensor, scores: torch.Tensor, precision: torch.Tensor,
                    cell_size: torch.Tensor, truth_xy: torch.Tensor, fitted_on: str = "",
                    centre: Optional[torch.Tensor] = None,
                    consensus: Tuple[float, float] = (0.0, 0.0),
                    same_scene: Optional[torch.Tensor] = None
                    ) -> Tuple[Calibration, Dict[str, float]]:
    """Scale and mixture sharpness that make the published ellipses hold their share of errors.

    A grid search over beta and log10(scale) (steps of 0.02). Among the pairs
    whose 1- and 2-sigma coverage both lie within ``COVERAGE_TOLERANCE`` of
    39.3 % / 86.5 %, the one with the lowest mean NLL wins: coverage alone is
    nearly flat in beta once the retrieval is sharp, while the NLL (a proper
    scoring rule) tells how far the wrong answers fall outside their ellipses.
    When no pair is within the tolerance, the smallest squared coverage miss
    wins, the NLL breaking near-ties. Inputs in float64: positions [B, K, 2]
    (each cell's own position), scores / precision / cell_size [B, K],
    truth_xy [B, 2]; ``centre`` [B, 2] the published position (default the best
    cell's) and ``consensus`` the (beta, bandwidth) that produced it, stored
    with the result; ``same_scene`` [B] False where the published answer is in
    another scene than the query (outside every ellipse). Returns the
    calibration and its report on these queries.
    """
    centre = positions[:, 0] if centre is None else centre
    err = elsewhere_errors(truth_xy - centre, same_scene)
    # variance at scale 1 (clamped like any scale)
    unit_var = hypothesis_variance(precision, cell_size, 1.0)
    within, closest = None, None
    for beta in FIT_BETAS:
        w = mixture_weights(scores, beta)
        # the scale-free part
        spread = mixture_covariance(positions, torch.zeros_like(unit_var), w, centre)
        iso = (w * unit_var).sum(-1)
        for log_scale in torch.arange(-4.0, 3.0001, 0.02).tolist():
            scale = 10 ** log_scale
            cov = spread + ((scale * iso).clamp(min=1e-4)[:, None, None]
                            * torch.eye(2, dtype=spread.dtype))
            d2 = mahalanobis_sq(err, cov)
            c1, c2 = float((d2 <= 1).double().mean()), float((d2 <= 4).double().mean())
            miss = round((c1 - TARGET_1SIGMA) ** 2 + (c2 - TARGET_2SIGMA) ** 2, 5)
            inside = max(abs(c1 - TARGET_1SIGMA), abs(c2 - TARGET_2SIGMA)) <= COVERAGE_TOLERANCE
            if not inside and closest is not None and miss > closest[0][0]:
                continue
            nll = mean_nll(err, cov)
            cal = Calibration(scale, beta, fitted_on, *consensus)
            if inside and (within is None or nll < within[0]):
                within = (nll, cal)
            if closest is None or (miss, nll) < closest[0]:
                closest = ((miss, nll), cal)
    cal = within[1] if within is not None else closest[1]
    return cal, calibration_report(err, published_covariance(positions, scores, precision,
                                                             cell_size, cal, centre=centre))
