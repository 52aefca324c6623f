"""The probability that an answer is in the right place, and what it does to the covariance.

The fine stage's precision says how sure it is *within* a cell; it cannot see
that the coarse stage picked the wrong cell, and a larger map holds more
look-alike places. So each answer also gets a probability of being within
10 m of the truth, from what the system can see:

========================  =====================================================
``score``                 fused retrieval score of the answer's cell
``margin``                its lead over the best hypothesis elsewhere (another
                          scene, or farther than ``FAR_M`` from the answer)
``agreeing``              log(1 + cells of the top k agreeing on the place)
``log_precision``         log lambda of the fine stage at the answer
``evidence``              how much of the description was understood
                          (:attr:`.language.Reading.evidence`)
``log_cells``             log10 of the gallery's size
========================  =====================================================

p = sigmoid(w . standardised features + b), a logistic regression fitted on
validation answers at several gallery sizes (validation cells plus distractor
cells of other cities; :func:`..evaluation.confidence_fit.fit_probability`), and stored
with the calibration (``calibration.json``, key ``probability``).

The published covariance keeps the mixture of eq. (2) of :mod:`.covariance` and
adds the doubt the mixture cannot see, an isotropic term for "somewhere else":

    Sigma' = Sigma + (1 - p)^gamma · V_far · I

with V_far (m²), gamma and the fine variances' scale fitted on the same
answers, with the gallery's scenes laid out in one frame as a city map's are:
the 2-sigma ellipses hold at least 86.5 % of them at every fitted gallery
size, and the 1-sigma ellipses as near 39.3 % as that allows
(:func:`..evaluation.confidence_fit.fit_scale_and_far_variance`). A sure answer
keeps its ellipse; a doubtful one gets an ellipse as wide as the places it may
be confused with. (With gamma = 1 the term a confident right answer still gets,
(1 - 0.95) · V_far, is several times its own fine variance: the ellipses of the
right answers grow too wide for 39.3 % inside 1 sigma. A steep gamma makes the
term a soft threshold instead: an answer the model doubts gets an ellipse as
large as the map, a sure one keeps its own.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch

FEATURES = ("score", "margin", "agreeing", "log_precision", "evidence", "log_cells")
FAR_M = 20.0  # a hypothesis farther than this from the answer is another place
RIGHT_M = 10.0  # "in the right place": within this distance of the truth


@dataclass
class ProbabilityModel:
    """Logistic regression on standardised answer features, and the covariance's far term."""

    weights: List[float]
    bias: float
    mean: List[float]
    std: List[float]
    far_variance_m2: float = 0.0
    features: List[str] = field(default_factory=lambda: list(FEATURES))
    fitted_on: str = ""
    far_power: float = 1.0  # gamma of the far term (1 - p)**gamma

    def to_dict(self) -> dict:
        return {"features": list(self.features), "weights": list(self.weights),
                "bias": self.bias, "mean": list(self.mean), "std": list(self.std),
                "far_variance_m2": self.far_variance_m2, "far_power": self.far_power,
                "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> Optional["ProbabilityModel"]:
        if not d:
            return None
        if list(d.get("features", [])) != list(FEATURES):
            raise ValueError(f"probability model features {d.get('features')} are not "
                             f"{list(FEATURES)}; fit it again")
        return cls([float(v) for v in d["weights"]], float(d["bias"]),
                   [float(v) for v in d["mean"]], [float(v) for v in d["std"]],
                   float(d.get("far_variance_m2", 0.0)), list(d["features"]),
                   str(d.get("fitted_on", "")), float(d.get("far_power", 1.0)))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.double() - torch.tensor(self.mean, dtype=torch.float64)) / torch.tensor(
            self.std, dtype=torch.float64)
        return x @ torch.tensor(self.weights, dtype=torch.float64) + self.bias

    def probability(self, features: torch.Tensor) -> torch.Tensor:
        """p [B] of answers with ``features`` [B, F]."""
        return torch.sigmoid(self.logits(features))


def answer_features(scores: torch.Tensor, positions: torch.Tensor, scene: torch.Tensor,
                    precision: torch.Tensor, agreeing: torch.Tensor, evidence: torch.Tensor,
                    cells: int) -> torch.Tensor:
    """Features [B, F] (see :data:`FEATURES`) of B answers from their hypotheses, answer first.

    scores [B, K] fused retrieval scores (as the consensus weighs them), positions [B, K, 2]
    metres, scene [B, K] scene ids, precision [B, K] lambda, agreeing [B, K], evidence [B],
    cells the gallery size.
    """
    scores = scores.double()
    b, k = scores.shape
    dist = (positions - positions[:, :1]).norm(dim=-1)                              # [B, K]
    far = (scene != scene[:, :1]) | (dist > FAR_M)
    elsewhere = scores.masked_fill(~far, float("-inf")).amax(1)
    # nothing elsewhere in the top k: the lead is at least over the last of them
    lowest = scores.amin(1)
    margin = scores[:, 0] - torch.where(torch.isfinite(elsewhere), elsewhere, lowest)
    lam = precision[:, 0].double().clamp(min=1e-6)
    return torch.stack([scores[:, 0], margin, torch.log1p(agreeing[:, 0].double()),
                        torch.log(lam), evidence.double().reshape(b),
                        torch.full((b,), math.log10(max(cells, 1)), dtype=torch.float64)], 1)


def inflate_covariance(cov: torch.Tensor, probability: torch.Tensor,
                       far_variance_m2: float, far_power: float = 1.0) -> torch.Tensor:
    """Sigma + (1 - p)**gamma V_far I for covariances [B, 2, 2] and probabilities [B]."""
    from .covariance import MAX_VARIANCE_M2

    extra = (1.0 - probability.double()).clamp(0.0, 1.0) ** far_power * far_variance_m2
    out = cov.double() + extra[:, None, None] * torch.eye(2, dtype=torch.float64)
    return out.clamp(-MAX_VARIANCE_M2, MAX_VARIANCE_M2)


def hypothesis_probabilities(probability: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per hypothesis [B, K]: the answer (first) p, the others share 1 - p by their mixture
    weights [B, K] (a place listed with its probability even when one Gaussian cannot say it)."""
    rest = weights[:, 1:].double()
    rest = rest / rest.sum(1, keepdim=True).clamp(min=1e-300)
    p = probability.double()[:, None]
    return torch.cat([p, (1.0 - p) * rest], dim=1)
