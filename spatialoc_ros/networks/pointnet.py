"""PointNet++ object encoder and classifier, in plain PyTorch.

SpatiaLoc (arXiv 2601.03579) §3.2 encodes objects with a frozen PointNet++.

The layout is the Text2Pos object classifier whose ``features2`` SpatiaLoc
uses as the 256-d per-object "class" feature. One object is a fixed-size
set of P points (P = 256 in the benchmark); shapes below use B objects.

    input   xyz [B, 256, 3] positions, rgb [B, 256, 3] colours in [0, 1]
    SA1     FPS 1/2, ball r 0.2, MLP [3+3 -> 32 -> 64]      [B, 128, 64]
    SA2     FPS 1/2, ball r 0.3, MLP [64+3 -> 128 -> 128]   [B, 64, 128]
    SA3     FPS 1/2, ball r 0.4, MLP [128+3 -> 256 -> 256]  [B, 32, 256]
    global  MLP [256+3 -> 512 -> 1024] per point, max-pool  [B, 1024]
    lin1    Linear 1024 -> 512, ReLU                        [B, 512]
    lin2    Linear 512 -> 256, ReLU   = object feature       [B, 256]
    head    Linear 256 -> num_classes                       [B, num_classes]

Every MLP layer is Linear + BatchNorm + ReLU, the last one included, as in
Text2Pos. A set-abstraction (SA) stage picks centres by farthest-point
sampling, gathers each centre's neighbours within the radius, runs the MLP
on the messages [x_j, pos_j - pos_i] and max-pools them per centre.

Coordinates. Points are given as the dataset stores them: cell-normalised
(1 = 30 m), neither centred on the object nor rescaled, exactly what the
SpatiaLoc object encoder feeds to PointNet++ (``--no_pc_augment``). The
radii are therefore in cell units (0.2 = 6 m). The SA messages only see
offsets ``pos_j - pos_i``, so where the object lies in its cell reaches the
network only through the global stage, which concatenates the absolute
position of the 32 SA3 centres; objects that stick out of the cell (whole
buildings keep all their points) give values outside [0, 1] there, which
is also what training sees. Train and use the encoder on the same
cell-normalised points.

Differences from PyTorch Geometric's ``fps`` / ``radius``, chosen so that
the encoder is deterministic and does not depend on the order of the input
points:

* FPS starts from the point farthest from the object's centroid (PyG
  starts from a random point), and once every distinct position is picked
  it repeats its picks in order (PyG's picks then depend on the point order).
* When more than ``max_neighbours`` points lie within the radius, the
  closest ones are kept (PyG keeps the first ones in memory order). With
  at most ``max_neighbours`` points in the ball the neighbourhoods match.
* Every centre gets exactly ``max_neighbours`` slots; empty slots repeat
  its nearest neighbour (the centre itself), which leaves the max-pool
  unchanged. In training mode those repeats do count in BatchNorm's batch
  statistics; in eval mode the output equals the PyG formulation.

Permutation guarantee: in eval mode, reordering the P input points leaves
the output unchanged up to float rounding, except when two *different*
points are exactly tied in a farthest-point or nearest-neighbour choice
(repeated copies of one point, as sampling with replacement produces,
carry identical features and never matter).
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..data.constants import CLASS_NAMES

FEATURE_DIM = 256


def gather_points(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Pick points per batch element: x [B, N, C], idx [B, ...] (values < N) -> [B, ..., C]."""
    B, N, C = x.shape
    offset = torch.arange(B, device=idx.device).view(B, *([1] * (idx.dim() - 1))) * N
    flat = torch.index_select(x.reshape(B * N, C), 0, (idx + offset).reshape(-1))
    return flat.view(*idx.shape, C)


@contextlib.contextmanager
def cpu_single_thread(device: torch.device) -> Iterator[None]:
    """Run a block of many tiny CPU ops on one thread (no-op on other devices).

    FPS issues a few small ops per pick; with several threads each one pays a
    synchronisation that costs far more than the work, above all when other
    processes share the cores.
    """
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a_i - b_j|² [B, M, N] of a [B, M, 3] and b [B, N, 3].

    Summed coordinate by coordinate, x² + y² + z² in that order, as
    ``(a_i - b_j).square().sum(-1)`` sums them, but without the [B, M, N, 3]
    intermediate and its strided reduction (about three times faster).
    """
    at, bt = a.transpose(1, 2), b.transpose(1, 2)
    d = at[:, 0, :, None] - bt[:, 0, None, :]
    out = d.square()
    for k in (1, 2):
        torch.sub(at[:, k, :, None], bt[:, k, None, :], out=d)
        out.add_(d.square_())
    return out


@torch.no_grad()
def farthest_point_sample(pos: torch.Tensor, m: int) -> torch.Tensor:
    """Farthest-point sampling of m of the N points of each set.

    pos [B, N, 3] -> indices [B, m]. The first pick is the point farthest from
    the set's centroid; each next pick is the point farthest from all picks so
    far (ties: the lowest index). Once every distinct position has been picked
    (sets with repeated points), the picks repeat from the start, so the
    result does not depend on which copy of a point comes first. Loops over
    the m picks, vectorised over B.
    """
    B, N, _ = pos.shape
    with cpu_single_thread(pos.device):
        idx = torch.empty(B, m, dtype=torch.long, device=pos.device)
        # distance of pick i to earlier picks
        gap = torch.empty(B, m, dtype=pos.dtype, device=pos.device)
        rows = torch.arange(B, device=pos.device)
        farthest = (pos - pos.mean(dim=1, keepdim=True)).square().sum(-1).argmax(dim=1)  # [B]
        dist = torch.full((B, N), math.inf, dtype=pos.dtype, device=pos.device)
        gap[:, 0] = math.inf
        coords = pos.transpose(1, 2).contiguous()  # [B, 3, N]: one row per coordinate
        d = torch.empty(B, N, dtype=pos.dtype, device=pos.device)
        step = torch.empty(B, N, dtype=pos.dtype, device=pos.device)
        for i in range(m):
            idx[:, i] = farthest
            picked = pos[rows, farthest]  # [B, 3]
            # squared distance to the pick, x² + y² + z² (see squared_distances)
            torch.sub(coords[:, 0], picked[:, :1], out=d)
            torch.mul(d, d, out=step)
            for k in (1, 2):
                torch.sub(coords[:, k], picked[:, k:k + 1], out=d)
                step.add_(d.square_())
            torch.minimum(dist, step, out=dist)
            best, farthest = dist.max(dim=1)
            if i + 1 < m:
                gap[:, i + 1] = best
    # Gaps never grow, so the distinct picks come first: n of them, then zeros.
    distinct = (gap > 0).sum(dim=1, keepdim=True)  # [B, 1], >= 1
    return idx.gather(1, torch.arange(m, device=pos.device).unsqueeze(0) % distinct)


@torch.no_grad()
def ball_query(pos: torch.Tensor, centres: torch.Tensor, radius: float, k: int,
               centre_index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Up to k neighbours within ``radius`` of each centre.

    pos [B, N, 3], centres [B, M, 3] -> indices into pos [B, M, min(k, N)].
    A point at exactly ``radius`` counts as inside. Without ``centre_index``
    the neighbours come nearest first and slots beyond the points inside the
    ball repeat the nearest neighbour. With ``centre_index`` [B, M] (each
    centre is the point pos[b, centre_index[b, i]], as farthest-point sampling
    picks them) the same neighbours come in no particular order and the empty
    slots repeat the centre itself: the nearest neighbour, at distance 0, so a
    max over the slots is the same, and no sort is needed.
    """
    d2 = squared_distances(centres, pos)  # [B, M, N]
    n = pos.shape[1]
    if centre_index is None:
        d2, idx = d2.topk(min(k, n), dim=-1, largest=False, sorted=True)
        return torch.where(d2 <= radius * radius, idx, idx[..., :1])
    if k >= n:  # every point is a candidate: no selection at all
        idx = torch.arange(n, device=pos.device).expand_as(d2)
    else:
        d2, idx = d2.topk(k, dim=-1, largest=False, sorted=False)
    return torch.where(d2 <= radius * radius, idx, centre_index.unsqueeze(-1))


def mlp(channels: Sequence[int]) -> nn.Sequential:
    """[c0 -> c1 -> ... ] as Linear + BatchNorm1d + ReLU per layer (Text2Pos ``get_mlp``).

    The Linears have no bias: BatchNorm cancels it in training (see ``masking.mlp_bn``).
    """
    layers = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [nn.Linear(c_in, c_out, bias=False), nn.BatchNorm1d(c_out),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def point_message_mlp(mlp_: nn.Sequential, x: torch.Tensor, pos: torch.Tensor,
                      idx: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Run ``mlp_`` on the messages [x_j, pos_j - pos_i] and max-pool them per centre i.

    x [B, N, C], pos [B, N, 3], idx [B, M, K] (the neighbours j of each centre),
    centres [B, M, 3] -> [B, M, C_out].

    The first Linear, W [x_j, pos_j - pos_i] + b, is evaluated as
    (W_x x_j + W_p pos_j + b) - W_p pos_i: once per point and once per centre
    instead of once per message (same result, K times fewer products).
    """
    first, rest = mlp_[0], mlp_[1:]
    C = x.shape[-1]
    w_x, w_p = first.weight[:, :C], first.weight[:, C:]
    per_point = F.linear(x, w_x) + F.linear(pos, w_p, first.bias)  # [B, N, H]
    neg_centre = F.linear(centres, w_p).neg()  # [B, M, H]
    B, M, K = idx.shape
    if torch.is_grad_enabled() or not _monotone_tail(rest):
        h = gather_points(per_point, idx) + neg_centre.unsqueeze(2)  # [B, M, K, H]
        return rest(h.view(B * M * K, -1)).view(B, M, K, -1).max(dim=2).values
    # Inference with BatchNorm folded (fold_batchnorm): the tail Linear -> ReLU commutes
    # with the max over K (ReLU and the bias are monotone per channel), so they run once per
    # centre; and the messages go through in slices of objects small enough to stay in cache.
    body, last = rest[:-3], rest[-3]
    width = max(per_point.shape[-1], last.out_features)
    step = max(1, _MESSAGE_BLOCK // (M * K * width))
    out = []
    for s in range(0, B, step):
        sl = slice(s, s + step)
        h = gather_points(per_point[sl], idx[sl]).add_(neg_centre[sl].unsqueeze(2))
        b = h.shape[0]
        y = F.linear(body(h.view(b * M * K, -1)), last.weight).view(b, M, K, -1)
        out.append(y.amax(dim=2))
    pooled = torch.cat(out)
    if last.bias is not None:
        pooled = pooled + last.bias
    return torch.relu(pooled)


_MESSAGE_BLOCK = 1 << 22  # message entries per slice of objects at inference (16 MB of float32)


def _monotone_tail(rest: nn.Sequential) -> bool:
    """True when ``rest`` ends Linear -> Identity (a folded BatchNorm) -> ReLU."""
    return (len(rest) >= 3 and isinstance(rest[-3], nn.Linear)
            and isinstance(rest[-2], nn.Identity) and isinstance(rest[-1], nn.ReLU))


class SetAbstraction(nn.Module):
    """FPS + ball query + shared MLP + max-pool: (x [B, N, C], pos [B, N, 3]) -> ([B, M, C'],
    [B, M, 3])."""

    def __init__(self, channels: Sequence[int], ratio: float, radius: float, max_neighbours: int):
        super().__init__()
        self.ratio, self.radius, self.max_neighbours = ratio, radius, max_neighbours
        self.mlp = mlp(channels)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        m = math.ceil(self.ratio * pos.shape[1])
        picks = farthest_point_sample(pos, m)  # [B, M]
        centres = gather_points(pos, picks)  # [B, M, 3]
        idx = ball_query(pos, centres, self.radius, self.max_neighbours, picks)  # [B, M, K]
        return point_message_mlp(self.mlp, x, pos, idx, centres), centres  # [B, M, C']


class GlobalAbstraction(nn.Module):
    """Shared MLP on [x, pos] per point, then max over points: ([B, N, C], [B, N, 3]) ->
    [B, C']."""

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        self.mlp = mlp(channels)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        h = self.mlp(torch.cat([x, pos], dim=-1).reshape(B * N, -1))
        return h.view(B, N, -1).max(dim=1).values


class PointNet2(nn.Module):
    """PointNet++ object classifier; ``features()`` gives the 256-d object feature.

    Constructor arguments are the architecture config saved with checkpoints
    (``config()``); defaults are the Text2Pos / SpatiaLoc values.
    """

    def __init__(self, num_classes: int = len(CLASS_NAMES), use_color: bool = True,
                 ratio: float = 0.5, radii: Sequence[float] = (0.2, 0.3, 0.4),
                 max_neighbours: int = 64):
        super().__init__()
        self._config = dict(num_classes=num_classes, use_color=use_color, ratio=ratio,
                            radii=[float(r) for r in radii], max_neighbours=max_neighbours)
        self.use_color = use_color
        self.feature_dim = FEATURE_DIM
        r1, r2, r3 = radii
        self.sa1 = SetAbstraction([3 + 3, 32, 64], ratio, r1, max_neighbours)
        self.sa2 = SetAbstraction([64 + 3, 128, 128], ratio, r2, max_neighbours)
        self.sa3 = SetAbstraction([128 + 3, 256, 256], ratio, r3, max_neighbours)
        self.sa_global = GlobalAbstraction([256 + 3, 512, 1024])
        self.lin1 = nn.Linear(1024, 512)
        self.lin2 = nn.Linear(512, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def config(self) -> dict:
        """The constructor arguments: ``PointNet2(**model.config())`` rebuilds the architecture."""
        return dict(self._config)

    def features(self, xyz: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        """Object features: xyz [B, P, 3] cell-normalised, rgb [B, P, 3] in [0, 1] -> [B, 256]."""
        if xyz.dim() != 3 or xyz.shape[-1] != 3 or rgb.shape != xyz.shape:
            raise ValueError(f"expected xyz and rgb of shape [B, P, 3], got {tuple(xyz.shape)} "
                             f"and {tuple(rgb.shape)}")
        return self.global_features(*self.local_features(xyz, rgb))

    def local_features(self, xyz: torch.Tensor,
                       rgb: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The three set-abstraction stages: -> (features [B, 32, 256], centres [B, 32, 3]).

        They see only offsets between points, so translating an object translates the
        centres and leaves the features unchanged: an object shared by several cells
        needs them once (see :func:`shift_centres`).
        """
        x = rgb if self.use_color else torch.zeros_like(rgb)
        x, pos = self.sa1(x, xyz)
        x, pos = self.sa2(x, pos)
        return self.sa3(x, pos)

    def global_features(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Global stage, lin1, lin2: (x [B, M, 256], pos [B, M, 3]) -> object features [B, 256]."""
        x = self.sa_global(x, pos)
        x = F.relu(self.lin1(x))
        return F.relu(self.lin2(x))

    def forward(self, xyz: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        """Class logits: xyz, rgb [B, P, 3] -> [B, num_classes]."""
        return self.head(self.features(xyz, rgb))


def fold_batchnorm(model: "PointNet2") -> "PointNet2":
    """An inference copy of ``model`` with every BatchNorm folded into the Linear before it.

    In eval mode BatchNorm is an affine map per channel, so W' = W * s and
    b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps) give the same
    outputs with one pass over the (large) neighbour tensors less per layer.
    """
    import copy

    folded = copy.deepcopy(model).eval()
    for seq in folded.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            lin, bn = seq[i], seq[i + 1]
            if isinstance(lin, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                with torch.no_grad():
                    lin.weight.mul_(scale[:, None])
                    bias = lin.bias if lin.bias is not None else torch.zeros_like(bn.bias)
                    lin.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
                seq[i + 1] = nn.Identity()
    return folded
