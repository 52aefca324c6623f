"""The published position covariance: the fine stage's precision and the coarse stage's doubt.

Per hypothesis i (a candidate cell), the fine stage gives a position mu_i and a
precision lambda_i in normalised cell units (the inverse variance of SpatiaLoc,
arXiv 2601.03579, §3.4, Eq. (16)). Its own variance per
axis, in m², is

    sigma_i² = scale · cell_size² / lambda_i                                   (1)

with ``scale`` fitted on the validation split (:func:`.evaluation.localization.fit_calibration`).
Retrieval can still pick the wrong cell: then mu_1 is far from the truth however
sharp lambda_1 is. So the covariance published with the answer is the second
moment, about the published position c, of the Gaussian mixture of all K
hypotheses (each cell's own position) with weights w = softmax(beta · retrieval score):

    Sigma = sum_i w_i (sigma_i² I + (mu_i - c)(mu_i - c)^T)                     (2)

where c is mu_1, or the position the overlapping cells agree on (:mod:`.consensus`)
when a consensus is fitted.

One confident cell (w_1 near 1) leaves sigma_1² I; several cells with similar
scores far apart (an ambiguous or meaningless description) widen the ellipse
towards them. ``beta`` is fitted together with ``scale``. Both are plain
numbers stored with the weights (``calibration.json``), next to the two of the
consensus.

A description whose sentences name nothing of the map's vocabulary (no class,
no colour) gives a ranking that means nothing: the weights are flattened by
the share of sentences that do, ``beta · informative``, so such a query gets
the spread of all its candidates, i.e. a visibly large ellipse.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["Calibration", "hypothesis_variance", "informative_scores", "mixture_covariance",
           "mixture_weights", "published_covariance", "sigma_radius_m"]

MIN_VARIANCE_M2 = 1e-4  # keeps every published matrix positive definite
MAX_VARIANCE_M2 = 1e8  # and within the ROS bound of 1e9 with room for the off-diagonal terms


@dataclass
class Calibration:
    """The fitted numbers of the answer's post-processing (defaults: uncalibrated, no
    consensus)."""

    scale: float = 1.0  # multiplies 1/lambda, eq. (1)
    beta: float = 1.0  # sharpness of the mixture weights over retrieval scores, eq. (2)
    fitted_on: str = ""  # what the fit used, e.g. "val: 2801 queries"
    consensus_beta: float = 0.0  # sharpness of the consensus weights (:mod:`.consensus`)
    consensus_bandwidth_m: float = 0.0  # its kernel bandwidth; 0 = retrieval order, no consensus
    # the answer's probability of being right and the covariance's far term
    # (:class:`.confidence.ProbabilityModel` as a dict); None: not fitted
    probability: Optional[dict] = None

    def to_dict(self) -> dict:
        out = {"scale": self.scale, "beta": self.beta, "fitted_on": self.fitted_on,
               "consensus_beta": self.consensus_beta,
               "consensus_bandwidth_m": self.consensus_bandwidth_m}
        if self.probability:
            out["probability"] = self.probability
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(float(d["scale"]), float(d["beta"]), str(d.get("fitted_on", "")),
                   float(d.get("consensus_beta", 0.0)), float(d.get("consensus_bandwidth_m", 0.0)),
                   d.get("probability") or None)


def sigma_radius_m(cov_xy) -> float:
    """1-sigma radius of a 2x2 covariance: the square root of its largest eigenvalue."""
    import numpy as np

    return float(np.sqrt(np.linalg.eigvalsh(np.asarray(cov_xy, dtype=np.float64)).max()))


def hypothesis_variance(precision: torch.Tensor, cell_size: torch.Tensor,
                        scale: float) -> torch.Tensor:
    """Per-axis variance in m² of each hypothesis, eq. (1); shapes broadcast, e.g. [B, K]."""
    var = scale * cell_size ** 2 / precision
    return var.clamp(MIN_VARIANCE_M2, MAX_VARIANCE_M2)


def informative_scores(scores: torch.Tensor, informative: Optional[torch.Tensor]) -> torch.Tensor:
    """scores [B, K] scaled by each query's share of sentences naming a known class or colour
    [B] (None: 1)."""
    return scores if informative is None else scores * informative.to(scores.dtype)[:, None]


def mixture_weights(scores: torch.Tensor, beta: float) -> torch.Tensor:
    """w [B, K] = softmax(beta · scores) over the K hypotheses of each query."""
    return torch.softmax(beta * scores, dim=-1)


def mixture_covariance(positions: torch.Tensor, variances: torch.Tensor, weights: torch.Tensor,
                       centre: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Eq. (2): the [B, 2, 2] covariance of each query about ``centre`` [B, 2] (default mu_1).

    positions [B, K, 2] in metres, variances [B, K] in m², weights [B, K] summing to 1.
    """
    d = positions - (positions[:, :1] if centre is None else centre[:, None])    # [B, K, 2]
    spread = torch.einsum("bk,bki,bkj->bij", weights, d, d)
    iso = (weights * variances).sum(-1)                                            # [B]
    cov = spread + iso[:, None, None] * torch.eye(2, dtype=positions.dtype)
    cov = 0.5 * (cov + cov.transpose(1, 2))
    return cov.clamp(-MAX_VARIANCE_M2, MAX_VARIANCE_M2)


def published_covariance(positions: torch.Tensor, scores: torch.Tensor, precision: torch.Tensor,
                         cell_size: torch.Tensor, cal: Calibration,
                         informative: Optional[torch.Tensor] = None,
                         centre: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The covariance [B, 2, 2] published about each query's answer, eq. (1) + (2).

    positions [B, K, 2] m, each cell's own fine-stage position; scores, precision,
    cell_size [B, K]; ``informative`` [B] the share of each query's sentences that
    name a known class or colour (default 1); ``centre`` [B, 2] the published
    position (default the best cell's).
    """
    var = hypothesis_variance(precision, cell_size, cal.scale)
    weights = mixture_weights(informative_scores(scores, informative), cal.beta)
    return mixture_covariance(positions, var, weights, centre)
