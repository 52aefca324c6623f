"""Text-side scene graph over the hints of a query (SpatiaLoc, arXiv 2601.03579, §3.2).

Shapes: B queries, Q hint slots (a query has 1..Q hints, padded at the end), D embedding size.

    H [B, Q, D] hint features, mask [B, Q] bool (True = real hint)
    -> F_Object_T [B, Q, D], F_Relation_T [B, Q, D], both L2-normalised, 0 at padded hints.

Text has no coordinates, so its edges come from the hint pair alone (the
paper's "coherent procedure ... relying on implicit directional cues"), then
go through the same kind of Gaussian Aggregation as the object edges (paper:
"an identical aggregation is performed on textual edges"; the reference code
has no Gaussian branch on the text side).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .beose import GaussianAggregation, pair_affine, pair_mask
from .masking import l2_normalize


class TextSceneGraph(nn.Module):
    """Hint graph with shared weights over ``iterations`` (code: 3)::

        t = H
        repeat:
            t_new = tanh(go(t)) * mask                    go: Linear D -> D        [B, Q, D]
            first iteration only: r = rel([t_m, t_n])     rel: Linear 2D -> D      [B, Q, Q, D]
            r = tanh(gr([t_m, t_n, r_mn])) * edge_mask    gr: Linear 3D -> D, pre-update t
            t = t_new
        F_Object_T   = l2(t)
        F_Relation_T = l2(GA(r))      GaussianAggregation(D, ga_mode), its own weights

    ``ga_mode`` follows the model's GA switch ("maxpool" = the "w/o GA" ablation).
    Nothing here scans the hints in order, so any hint mask works (padding need
    not be trailing); each output at a valid hint depends on valid hints only.
    """

    def __init__(self, d: int, iterations: int = 3, ga_mode: str = "gaussian"):
        super().__init__()
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.iterations = iterations
        self.go = nn.Linear(d, d)
        self.rel = nn.Linear(2 * d, d)
        self.gr = nn.Linear(3 * d, d)
        self.ga = GaussianAggregation(d, mode=ga_mode)

    def forward(self, hints: torch.Tensor,
                mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """hints [B, Q, D], mask [B, Q] bool -> (F_Object_T, F_Relation_T), each [B, Q, D]."""
        pad_nodes = ~mask.unsqueeze(-1)                                       # [B, Q, 1]
        pad_edges = ~pair_mask(mask).unsqueeze(-1)                            # [B, Q, Q, 1]
        t = hints
        r = None
        for _ in range(self.iterations):
            t_new = torch.tanh(self.go(t)).masked_fill(pad_nodes, 0.0)
            if r is None:
                r = pair_affine(self.rel.weight, self.rel.bias, t)            # [B, Q, Q, D]
            r = torch.tanh(pair_affine(self.gr.weight, self.gr.bias, t, r))
            r = r.masked_fill(pad_edges, 0.0)
            t = t_new
        return l2_normalize(t, mask), l2_normalize(self.ga(r, mask), mask)
