"""Small helpers for padded batches: apply a layer to valid rows only, masked pooling.

Padded slots must never change a result. Layers with batch statistics
(BatchNorm) therefore run on the valid rows alone, and poolings ignore padding.
"""
from __future__ import annotations

import torch
from torch import nn


def check_padding_mask(mask: torch.Tensor, n: int, require_valid: bool = True) -> torch.Tensor:
    """Validate mask [B, n] (bool, True = valid, valid entries first) -> valid counts [B].

    Padding at the end is what packed recurrent layers and causal scans need to be
    padding-free. With ``require_valid`` every row must hold at least one valid entry.
    """
    if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[1] != n:
        raise ValueError(f"mask must be bool [B, {n}], got {mask.dtype} {tuple(mask.shape)}")
    lengths = mask.sum(1)
    if require_valid and not bool((lengths > 0).all()):
        raise ValueError("every row of the mask needs at least one valid entry")
    prefix = torch.arange(n, device=mask.device) < lengths.unsqueeze(1)
    if not bool((prefix == mask).all()):
        raise ValueError("valid entries must come first in each row (padding at the end)")
    return lengths


def apply_valid(layer: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``layer`` on the valid rows of x [B, N, Din] (mask [B, N] bool) -> [B, N, Dout], zeros at
    padding."""
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

    The ``get_mlp`` of the reference SpatiaLoc code, without the Linear biases: in
    training a BatchNorm subtracts the batch mean, which cancels any bias before it,
    so such a bias could never learn (BatchNorm's own shift plays its part).
    Checkpoints that have them load through
    :func:`~spatialoc_ros.networks.checkpoint.upgrade_state`.
    """
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b)]
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)
