"""Per-object embeddings of a cell: class, colour, position and size streams.

They are the visual features V of SpatiaLoc (arXiv 2601.03579) §3.2; the
streams follow the reference code.

Inputs are padded per cell (B cells, N object slots, mask [B, N]):

* ``point_features`` [B, N, 256]: the frozen PointNet++ features of each object,
* ``colors`` [B, N, 3]: mean rgb in [0, 1],
* ``centers`` [B, N, 3]: mean xyz, cell-normalised,
* ``counts`` [B, N]: raw point counts.

Each stream gives a D-vector per object and is L2-normalised; the class stream
is first enhanced by masked self-attention over the cell's objects, whose
values carry max-pooled embeddings of the offsets to every other object (the
design the reference code intended: its attention ran on sequences of length
one, so it reduced to a per-object affine map). The streams are concatenated
and merged by Linear + BN into
the un-normalised object embedding used by BEOSE (and, normalised, by FAE).
"""
from __future__ import annotations

import torch
from torch import nn

from .masking import apply_valid, l2_normalize, masked_max, mlp_bn

# Point-count standardisation of KITTI360Pose (the reference code's constants); the
# trainer replaces them with the training split's own statistics of log counts.
KITTI360POSE_COUNT_MEAN = 1826.6844940968194
KITTI360POSE_COUNT_STD = 2516.8905096993817


class RelationEnhance(nn.Module):
    """Masked self-attention over a cell's objects; values see the offsets to the others."""

    def __init__(self, d: int, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        # k has no bias: a key bias adds q . b to every logit of one query's softmax
        # over the keys, which cancels, so it could never learn
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d, bias=False), nn.Linear(d, d)
        self.offset = nn.Linear(3, d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)

    def upgrade_state_dict(self, state: dict, prefix: str) -> None:
        """Older checkpoints carry the inert ``k.bias``; drop it."""
        state.pop(f"{prefix}k.bias", None)

    def forward(self, f: torch.Tensor, centers: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # g_n = max over valid m of Linear(c_m - c_n): [B, N, N, D] -> [B, N, D]
        offsets = self.offset(centers.unsqueeze(1) - centers.unsqueeze(2))  # [B, n, m, D]
        g = masked_max(offsets.flatten(0, 1), mask.repeat_interleave(f.shape[1], 0)).view_as(f)
        out, _ = self.attn(self.q(f), self.k(f), self.v(f) + g, key_padding_mask=~mask,
                           need_weights=False)
        return out * mask.unsqueeze(-1)


class ObjectEncoder(nn.Module):
    """Merged object embeddings [B, N, D] (un-normalised, zeros at padding)."""

    def __init__(self, d: int = 256, point_dim: int = 256, hidden: int = 64):
        super().__init__()
        self.class_proj = mlp_bn([point_dim, d])
        self.relation = RelationEnhance(d)
        self.color = mlp_bn([3, hidden, d])
        self.position = mlp_bn([3, hidden, d])
        self.size = mlp_bn([1, hidden, d])
        self.merge = mlp_bn([4 * d, d])
        self.register_buffer("count_mean", torch.tensor(float(KITTI360POSE_COUNT_MEAN)))
        self.register_buffer("count_std", torch.tensor(float(KITTI360POSE_COUNT_STD)))

    def forward(self, point_features, colors, centers, counts, mask) -> torch.Tensor:
        cls = apply_valid(self.class_proj, point_features, mask)
        cls = l2_normalize(self.relation(cls, centers, mask), mask)
        col = l2_normalize(apply_valid(self.color, colors, mask), mask)
        pos = l2_normalize(apply_valid(self.position, centers, mask), mask)
        size = (counts.to(self.count_mean.dtype) - self.count_mean) / self.count_std
        size = size.unsqueeze(-1)
        num = l2_normalize(apply_valid(self.size, size, mask), mask)
        return apply_valid(self.merge, torch.cat([cls, col, pos, num], dim=-1), mask)
