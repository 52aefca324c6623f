"""Consensus of overlapping cells: the place several retrieved cells agree on is the answer.

Cells are 30 m squares laid out every 10 m (see spatialoc_ros/data/cells.py and
README.md, "The synthetic city"), so a point
of the map lies in up to nine of them, and the top-k of a good query usually
holds several cells around the true pose. The fine stage refines each on its
own; where their world positions agree, that place is more likely than the
position of the single best-scored cell, and the mean of the agreeing positions
averages the fine stage's errors.

The K refined positions mu_j with weights w = softmax(beta · retrieval score)
define a kernel density with a Gaussian kernel of bandwidth h (metres).
Mean shift from each mu_i climbs to a mode m_i of that density; candidates
whose modes coincide (closer than h / 2) form one group, whose support is the
density at its mode. The hypotheses are then ordered: the best-scored cell of
each group, groups by decreasing support; then the other members in the same
group order. A group's first hypothesis stands at the group's mode, the other
members keep their own cell's position (further, distinct guesses for k > 1).

With h = 0 (the default of an uncalibrated weights folder) nothing changes:
retrieval order and each cell's own position, the papers' protocol.
``beta`` and ``h`` are fitted on the validation split (:func:`fit_consensus`)
and stored with the covariance calibration.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import torch

__all__ = ["FIT_BANDWIDTHS_M", "FIT_BETAS", "Consensus", "consensus_order", "fit_consensus",
           "mean_shift", "reorder"]

MEAN_SHIFT_STEPS = 30
MEAN_SHIFT_TOL_M = 1e-3
FIT_BETAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
FIT_BANDWIDTHS_M = (2.5, 5.0, 7.5, 10.0, 15.0, 20.0)


def _kernel(points: torch.Tensor, positions: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """exp(-|p_i - mu_j|² / 2h²) [B, P, K] for points [B, P, 2] and positions [B, K, 2]."""
    d2 = ((points[:, :, None, :] - positions[:, None, :, :]) ** 2).sum(-1)
    return torch.exp(-0.5 * d2 / bandwidth ** 2)


def mean_shift(positions: torch.Tensor, weights: torch.Tensor, bandwidth: float,
               scene: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Modes [B, K, 2] reached from every position and the density there [B, K].

    positions [B, K, 2] metres, weights [B, K] summing to 1, bandwidth h > 0
    metres, scene [B, K] an id of each candidate's scene: every scene has its
    own world frame, so only candidates of the same scene attract each other.
    """
    same = scene[:, :, None] == scene[:, None, :]                                  # [B, K, K]
    modes = positions.clone()
    for _ in range(MEAN_SHIFT_STEPS):
        k = weights[:, None, :] * _kernel(modes, positions, bandwidth) * same
        mass = k.sum(-1, keepdim=True)
        shifted = torch.where(mass > 0,
                              torch.einsum("bpk,bkd->bpd", k, positions) / mass.clamp(min=1e-300),
                              modes)
        moved = (shifted - modes).norm(dim=-1).max()
        modes = shifted
        if float(moved) < MEAN_SHIFT_TOL_M:
            break
    support = (weights[:, None, :] * _kernel(modes, positions, bandwidth) * same).sum(-1)
    return modes, support


class Consensus(NamedTuple):
    """The hypotheses of B queries in consensus order (all [B, K, ...], best first)."""

    order: torch.Tensor  # [B, K] index into the retrieval order
    # [B, K, 2] a group's mode for its leader, else the cell's own position
    positions: torch.Tensor
    agreeing: torch.Tensor  # [B, K] cells in the hypothesis' group (itself included)


def consensus_order(positions: torch.Tensor, scores: torch.Tensor, beta: float, bandwidth: float,
                    scene: Optional[torch.Tensor] = None) -> Consensus:
    """The order, positions and group sizes of the hypotheses.

    positions [B, K, 2] world metres and scores [B, K] in retrieval order (best
    first); scene [B, K] an id of each candidate's scene (default: all one).
    ``bandwidth`` <= 0 keeps the retrieval order and the cells' own positions.
    """
    b, k = scores.shape
    if bandwidth <= 0 or k == 1:
        return Consensus(torch.arange(k).expand(b, k).clone(), positions.clone(),
                         torch.ones(b, k, dtype=torch.long))
    scene = torch.zeros(b, k, dtype=torch.long) if scene is None else scene
    weights = torch.softmax(beta * scores, dim=-1)
    modes, support = mean_shift(positions, weights, bandwidth, scene)
    # groups: walk the candidates by decreasing support; join the first group whose mode is near
    by_support = support.argsort(dim=1, descending=True, stable=True)
    group = torch.full((b, k), -1, dtype=torch.long)
    lead_mode = torch.zeros(b, k, 2, dtype=positions.dtype)
    lead_scene = torch.full((b, k), -1, dtype=torch.long)
    groups = torch.zeros(b, dtype=torch.long)
    rows = torch.arange(b)
    for step in range(k):
        i = by_support[:, step]
        m = modes[rows, i]                                                      # [B, 2]
        near = (lead_mode - m[:, None]).norm(dim=-1) < 0.5 * bandwidth          # [B, K groups]
        near &= (torch.arange(k)[None] < groups[:, None]) & (lead_scene == scene[rows, i][:, None])
        joined = near.any(dim=1)
        g = torch.where(joined, near.double().argmax(dim=1), groups)
        lead_mode[rows[~joined], groups[~joined]] = m[~joined]
        lead_scene[rows[~joined], groups[~joined]] = scene[rows, i][~joined]
        groups += (~joined).long()
        group[rows, i] = g
    # leaders (a group's best-scored cell, the first in retrieval order) first, then the rest
    rank = torch.arange(k).expand(b, k)
    first = torch.full((b, k), k, dtype=torch.long).scatter_reduce(1, group, rank, reduce="amin")
    is_lead = first.gather(1, group) == rank
    key = (~is_lead).long() * k * k + group * k + rank
    order = key.argsort(dim=1)
    fused = torch.where(is_lead[..., None],
                        lead_mode.gather(1, group[..., None].expand(b, k, 2)), positions)
    size = torch.zeros(b, k, dtype=torch.long).scatter_add(1, group,
                                                           torch.ones(b, k, dtype=torch.long))
    return Consensus(order, reorder(order, fused), reorder(order, size.gather(1, group)))


def reorder(order: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """values [B, K, ...] taken in ``order`` [B, K] along dim 1."""
    return values.gather(1, order.view(order.shape + (1,) * (values.dim() - 2)).expand_as(values))


def fit_consensus(positions: torch.Tensor, scores: torch.Tensor, scene: torch.Tensor,
                  truth_xy: torch.Tensor, same_scene: torch.Tensor,
                  thresholds: Sequence[float] = (5.0, 10.0, 15.0),
                  betas: Sequence[float] = FIT_BETAS,
                  bandwidths: Sequence[float] = FIT_BANDWIDTHS_M) -> Tuple[float, float, float]:
    """(beta, bandwidth, objective): the pair whose best position is most often near the truth.

    The objective is the mean over ``thresholds`` of the share of queries whose
    first hypothesis lies within that many metres (localization recall at
    k = 1); (0, 0), the retrieval order, competes too. positions [B, K, 2],
    scores [B, K], scene [B, K] ids, truth_xy [B, 2], same_scene [B, K] whether
    a candidate lies in its query's scene (another scene is a miss).
    """
    def objective(c: Consensus) -> float:
        err = (c.positions[:, 0] - truth_xy).norm(dim=-1)
        err = err.masked_fill(~same_scene.gather(1, c.order[:, :1]).squeeze(1), float("inf"))
        return float(sum((err <= t).double().mean() for t in thresholds) / len(thresholds))

    best = (0.0, 0.0, objective(consensus_order(positions, scores, 0.0, 0.0)))
    for beta in betas:
        for h in bandwidths:
            value = objective(consensus_order(positions, scores, beta, h, scene))
            if value > best[2] + 1e-9:
                best = (beta, h, value)
    return best
