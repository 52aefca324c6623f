"""Object-side relation encoder: BEOSE and Gaussian Aggregation.

Both are from SpatiaLoc (arXiv 2601.03579) §3.2, Eqs. (3)-(8).

Shapes: B cells, N object slots per cell (padded at the end), D embedding size.

    X [B, N, D]  object embeddings (un-normalised), C [B, N, 3] centroids (cell units),
    mask [B, N] bool (True = real object; the valid slots of a cell come first)

    BEOSE                 -> node states x [B, N, D], edge features E* [B, N, N, D]
    GaussianAggregation   E* -> node descriptors [B, N, D]
    ObjectRelationEncoder X, C, mask -> F_Object_P, F_Relation_P (both [B, N, D], L2-normalised)

Edge (m, n) is the ordered pair "from object n to object m" (offset C_m - C_n,
paper Eq. 3). Padding never changes a result: every output at a valid slot is
computed from valid slots only, whatever the padded slots hold.

Pair features ``Linear([a_m, b_n, r_mn])`` are never built by concatenation:
the Linear splits into per-node terms, computed once per node and broadcast,
plus one edge term (:func:`pair_affine`). This is the same map, with a fraction
of the memory and time of the [B, N, N, 3D] concatenation.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .masking import check_padding_mask, l2_normalize

GA_MODES = ("gaussian", "maxpool")
# Gaussian components of the latent Z, averaged into one score (as in the reference code)
GA_COMPONENTS = 3


def pair_affine(weight: torch.Tensor, bias: Optional[torch.Tensor], nodes: torch.Tensor,
                edges: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(cat([nodes_m, nodes_n, edges_mn]), weight, bias)`` for all pairs (m, n).

    weight [O, 2*Dn] (no edges) or [O, 2*Dn + De]; bias [O] or None;
    nodes [B, N, Dn]; edges [B, N, N, De] or None -> [B, N, N, O].

    The concatenation is never built: with weight = [W_a | W_b | W_c] the result
    is ``W_a nodes_m + (W_b nodes_n + bias) + W_c edges_mn``.
    """
    dn = nodes.shape[-1]
    term_m = F.linear(nodes, weight[:, :dn]).unsqueeze(2)                 # [B, N, 1, O]
    term_n = F.linear(nodes, weight[:, dn:2 * dn], bias).unsqueeze(1)     # [B, 1, N, O]
    if edges is None:
        return term_m + term_n
    return F.linear(edges, weight[:, 2 * dn:]).add_(term_m).add_(term_n)  # [B, N, N, O]


def pair_mask(mask: torch.Tensor) -> torch.Tensor:
    """Edge mask: mask [B, N] bool -> [B, N, N] bool, True where both m and n are valid."""
    return mask.unsqueeze(2) & mask.unsqueeze(1)


class GaussianAggregation(nn.Module):
    """Edge features -> node descriptors (paper Eqs. 7-8, made well-defined as below).

    ``mode="gaussian"`` (the method)::

        e   = esa(E*)                                   Linear D -> D        [B, N, N, D]
        A   = softmax_n(e)                              per channel          [B, N, N, D]
        Z   = mu(e) + exp(0.5 logvar(e)) * eps          3 components         [B, N, N, 3]
              (mu has no bias: a bias adds one constant to every logit of
              the softmax over n below, which cancels, so it could never learn)
              (eps ~ N(0, 1) in training; Z = mu(e) in eval)
        G   = softmax_n(mean_k Z)                       one weight per edge  [B, N, N]
        v_m = sum_n (0.5 A_mn + 0.5 G_mn) * e_mn                             [B, N, D]

    Eq. 8 as printed sums softmaxes alone, which is the constant 2; the weights
    multiply the edge features, and the softmax runs over the summed axis n
    (the reference code normalises over m while it sums over n). Both softmaxes
    exclude padded n (-inf logits).

    ``mode="maxpool"`` (the "w/o GA" ablation of Table 5): v_m = max over valid n of e_mn.

    Padded pairs may hold any finite values. Padded m rows are 0. A cell
    without any valid slot gives all zeros (its softmaxes run unmasked over
    finite values, then the rows are zeroed), so no NaN.
    """

    def __init__(self, d: int, mode: str = "gaussian"):
        super().__init__()
        if mode not in GA_MODES:
            raise ValueError(f"mode must be one of {GA_MODES}, got {mode!r}")
        self.mode = mode
        self.esa = nn.Linear(d, d)
        if mode == "gaussian":
            self.mu = nn.Linear(d, GA_COMPONENTS, bias=False)
            self.logvar = nn.Linear(d, GA_COMPONENTS)

    def upgrade_state_dict(self, state: dict, prefix: str) -> None:
        """Checkpoints written before ``mu`` lost its bias carry ``mu.bias``; drop it.

        It is inert there: mean_k(mu(e) + b) = mean_k mu(e) + mean(b) shifts every
        logit of softmax_n by the same constant, so the weights G are unchanged.
        """
        state.pop(f"{prefix}mu.bias", None)

    def forward(self, edges: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """edges [B, N, N, D] (pair m, n), mask [B, N] bool -> descriptors [B, N, D]."""
        e = self.esa(edges)                                                  # [B, N, N, D]
        # -inf at excluded n: padded, unless the cell has no valid slot (then none is excluded)
        drop_n = (~mask & mask.any(1, keepdim=True)).unsqueeze(1)            # [B, 1, N]
        logit_mask = torch.zeros(drop_n.shape, dtype=e.dtype, device=e.device)
        logit_mask = logit_mask.masked_fill(drop_n, float("-inf")).unsqueeze(-1)  # [B, 1, N, 1]
        if self.mode == "maxpool":
            # max() rather than amax(): its backward scatters through the argmax only
            out = (e + logit_mask).max(2).values
        else:
            base = torch.softmax(e + logit_mask, dim=2)                      # [B, N, N, D]
            z = self.mu(e)                                                   # [B, N, N, 3]
            if self.training:  # reparameterisation, Eq. 7
                z = z + torch.exp(0.5 * self.logvar(e)) * torch.randn_like(z)
            gauss = torch.softmax(z.mean(-1, keepdim=True) + logit_mask, dim=2)  # [B, N, N, 1]
            # sum_n G_mn e_mn as a batched matmul: [B, N, 1, N] @ [B, N, N, D]
            out = 0.5 * (base * e).sum(2) + 0.5 * (gauss.transpose(2, 3) @ e).squeeze(2)
        return out.masked_fill(~mask.unsqueeze(-1), 0.0)


class BEOSE(nn.Module):
    """Bézier-Enhanced Object Spatial Encoder (paper §3.2), as the reference code computes it.

    The paper runs an LSTM on every edge and predicts separate end points P0, P2
    and a per-edge tau; the reference code, and this module, run the LSTM over
    the nodes, with P2 = P0 and one learnable t shared by all edges.

    Weights are shared across the ``iterations`` (paper: 𝒩; code: 3)::

        O_mn = C_m - C_n                      Eq. 3                           [B, N, N, 3]
        r    = geo(O)                         MLP_geo = Linear 3 -> D          [B, N, N, D]
        repeat:
            x_new = LSTM(x) * mask            node LSTM over the object slots  [B, N, D]
            P0    = fuse([x_m, x_n, r_mn])    MLP_fuse = Linear 3D -> D, pre-update x
            P1    = ctrl(P0)                  Linear D -> D                    (Eq. 5)
            t     = sigmoid(beta)             one learnable scalar, beta_0 = 0.5
            Ê     = (1-t)^2 P0 + 2(1-t)t P1 + t^2 P0      Eq. 6, end point P2 = P0
            r     = tanh(Ê) * edge_mask       E* (bounded)
            x     = x_new

    Returns the final node state x (F_Object_P before normalisation) and r (E*).

    The node LSTM scans the slots in cell order. Padded slots are trailing, so
    in this one-directional scan they never feed state into a valid slot: their
    outputs are simply zeroed. A mask with padding before a valid slot is
    rejected (ValueError).

    Speed (same function, same parameters): with one scalar t, Ê is affine in
    P0: Ê = M P0 + b t_c with M = a I + b W_c, a = (1-t)^2 + t^2,
    b = 2t(1-t), (W_c, t_c) = ctrl. fuse followed by this map is one affine map
    of [x_m, x_n, r_mn], applied with :func:`pair_affine`: one [B, N, N, D] x [D, D]
    product per iteration, none in the first (see :meth:`pair_with_offsets`).

    ``ablate=True`` is the "w/o BEOSE" ablation (paper Table 5): one pass
    E = fuse([X_m, X_n, geo(O_mn)]) (zero at padded pairs), with the same geo and fuse layers,
    and no LSTM, Bézier step, tanh or iteration. With no node LSTM, the node
    output is a learned projection ``node_proj`` (Linear D -> D) of X, the
    paper's "V' = projections of raw features" (L_IO, §3.2), so L_IO still trains
    its own feature space.
    """

    def __init__(self, d: int, iterations: int = 3, ablate: bool = False):
        super().__init__()
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.d = d
        self.iterations = iterations
        self.ablate = ablate
        self.geo = nn.Linear(3, d)
        self.fuse = nn.Linear(3 * d, d)
        if ablate:
            self.node_proj = nn.Linear(d, d)
        else:
            self.lstm = nn.LSTM(d, d, batch_first=True)
            self.ctrl = nn.Linear(d, d)
            self.beta = nn.Parameter(torch.tensor(0.5))

    def bezier_fuse_params(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Weight [D, 3D] and bias [D] of the affine map [x_m, x_n, r_mn] -> Ê (Eqs. 5-6)."""
        t = torch.sigmoid(self.beta)
        a = (1 - t) ** 2 + t ** 2          # weight of P0 and of P2 (= P0)
        b = 2 * (1 - t) * t                # weight of P1
        eye = torch.eye(self.d, dtype=self.ctrl.weight.dtype, device=self.ctrl.weight.device)
        m = a * eye + b * self.ctrl.weight                                    # [D, D]
        weight = m @ self.fuse.weight                                         # [D, 3D]
        bias = m @ self.fuse.bias + b * self.ctrl.bias                        # [D]
        return weight, bias

    def pair_with_offsets(self, weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor,
                          centroids: torch.Tensor) -> torch.Tensor:
        """Affine map (weight [D, 3D], bias [D]) of [x_m, x_n, geo(C_m - C_n)] -> [B, N, N, D].

        geo is affine, so its edge term W_r geo(O_mn) = G C_m - G C_n + W_r b_geo
        (G = W_r W_geo, W_r the last D columns of weight) splits into node terms:
        no [B, N, N, 3] offsets and no [B, N, N, D] r_0 are built.
        """
        d = self.d
        w_r = weight[:, 2 * d:]
        g = w_r @ self.geo.weight                                             # [D, 3]
        nodes = torch.cat([x, centroids], dim=-1)                             # [B, N, D + 3]
        w_nodes = torch.cat([weight[:, :d], g, weight[:, d:2 * d], -g], dim=1)  # [D, 2(D + 3)]
        return pair_affine(w_nodes, bias + w_r @ self.geo.bias, nodes)

    def forward(self, x: torch.Tensor, centroids: torch.Tensor,
                mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [B, N, D], centroids [B, N, 3], mask [B, N] bool (valid slots first)
        -> node states [B, N, D], edges E* [B, N, N, D]; both 0 at padded slots/pairs.

        Edge (m, n) only ever reads x_m, x_n and its own r_mn, so padded pairs
        cannot reach valid ones and are zeroed once, at the end.
        """
        check_padding_mask(mask, mask.shape[1], require_valid=False)
        pad_nodes = ~mask.unsqueeze(-1)                                       # [B, N, 1]
        pad_edges = ~pair_mask(mask).unsqueeze(-1)                            # [B, N, N, 1]
        if self.ablate:
            edges = self.pair_with_offsets(self.fuse.weight, self.fuse.bias, x, centroids)
            return self.node_proj(x).masked_fill(pad_nodes, 0.0), edges.masked_fill(pad_edges, 0.0)
        weight, bias = self.bezier_fuse_params()
        e_hat = self.pair_with_offsets(weight, bias, x, centroids)  # first iteration, r = r_0
        r = None  # set by the first iteration, read from the second on
        for i in range(self.iterations):
            x_new = self.lstm(x)[0].masked_fill(pad_nodes, 0.0)
            if i > 0:
                e_hat = pair_affine(weight, bias, x, r)                       # pre-update x
            r = torch.tanh(e_hat)
            x = x_new
        return x, r.masked_fill(pad_edges, 0.0)


class ObjectRelationEncoder(nn.Module):
    """BEOSE + Gaussian Aggregation: the object side of the instance-level losses (paper §3.2).

    forward(x [B, N, D], centroids [B, N, 3], mask [B, N] bool) ->
        F_Object_P   [B, N, D]  final BEOSE node state (L_IO),
        F_Relation_P [B, N, D]  GA of the BEOSE edges (L_IS),
    both L2-normalised along D, 0 at padded slots.

    Ablations (Table 5): ``ablate_beose=True`` is "w/o BEOSE", ``ga_mode="maxpool"`` is "w/o GA".
    """

    def __init__(self, d: int, iterations: int = 3, ablate_beose: bool = False,
                 ga_mode: str = "gaussian"):
        super().__init__()
        self.beose = BEOSE(d, iterations=iterations, ablate=ablate_beose)
        self.ga = GaussianAggregation(d, mode=ga_mode)

    def forward(self, x: torch.Tensor, centroids: torch.Tensor,
                mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        nodes, edges = self.beose(x, centroids, mask)
        return l2_normalize(nodes, mask), l2_normalize(self.ga(edges, mask), mask)
