"""Losses of the fine stage, in cell-normalised units (arXiv 2601.03579 §3.4, Eq. 16).

* :func:`ugfl_loss`, the paper's L_reg = lambda * ||p_pred - p_gt||_1 + 1 / lambda (Eq. 16).
  For a fixed L1 error e the optimum is lambda* = e^(-1/2) and the minimum
  2 sqrt(e): a robust 2 sqrt(L1) in which lambda learns how far to trust a
  prediction. lambda is not detached, so the 1/lambda term is what
  stops it collapsing to 0.
* :func:`regression_loss`, the "w/o probability" ablation: 5 * MSE, the
  reference code's and Text2Loc's loss (their ``offset_lambda`` = 5).

``offset`` and ``target`` are offsets from the cell centre [B, 2]; a shift of
both by the centre changes nothing, so the same losses hold for positions.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

MSE_WEIGHT = 5.0


def ugfl_loss(offset: torch.Tensor, precision: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of lambda * (|dx| + |dy|) + 1 / lambda; precision [B] > 0."""
    l1 = (offset - target).abs().sum(-1)
    return (precision * l1 + 1.0 / precision).mean()


def regression_loss(offset: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """5 * MSE over both coordinates of the batch (the ablation without the lambda branch)."""
    return MSE_WEIGHT * F.mse_loss(offset, target)


def fine_loss(offset: torch.Tensor, precision: Optional[torch.Tensor],
              target: torch.Tensor) -> torch.Tensor:
    """:func:`ugfl_loss` when the model predicts lambda, else :func:`regression_loss`."""
    if precision is None:
        return regression_loss(offset, target)
    return ugfl_loss(offset, precision, target)
