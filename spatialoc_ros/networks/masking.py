"""Small helpers for padded batches: apply a layer to valid rows only, masked pooling.

Padded slots must never change a result. Layers with batch statistics
(BatchNorm) therefore run on the valid rows alone, and poolings ignore padding.
"""
from __future__ import annotations

import torch
from torch import nn


def apply_valid(layer: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``layer`` on the valid rows of x [B, N, Din] (mask [B, N] bool) -> [B, N, Dout], zeros at padding."""
    out = layer(x[mask])
    full = out.new_zeros(x.shape[0], x.shape[1], out.shape[-1])
    full[mask] = out
    return full


def masked_max(x: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Max over ``dim`` of x [B, N, D] ignoring padded slots; all-padded rows give zeros."""
    filled = x.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    out = filled.max(dim=dim).values
    return torch.where(torch.isfinite(out), out, torch.zeros_like(out))


def l2_normalize(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Unit vectors along the last axis; padded slots (mask False) become zero."""
    x = nn.functional.normalize(x, dim=-1)
    return x if mask is None else x * mask.unsqueeze(-1)


def mlp_bn(sizes) -> nn.Sequential:
    """Linear + BatchNorm + ReLU between layers, Linear + BatchNorm (no ReLU) at the end.

    SpatiaLoc's ``get_mlp`` (spatialoc_method.md §0.3).
    """
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b)]
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)
