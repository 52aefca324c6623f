"""Mamba-2 mixer in plain PyTorch, parameter-compatible with ``mamba_ssm``.

SpatiaLoc uses Mamba-2 (the SSD form of "Transformers are SSMs", Dao & Gu
2024) as a bare sequence mixer over short sequences: the 6 hints of a query
(coarse text, ``d_model`` 256) and the <= 28 hints/objects of the fine stage
(``d_model`` 128). This module computes what ``mamba_ssm.Mamba2`` computes,
without its CUDA/Triton kernels, and holds the same parameters under the same
names and shapes, so a ``state_dict`` loads into either one with
``strict=True``.

Sizes (``d_inner = expand * d_model``, ``nheads = d_inner / headdim``,
``G = ngroups``, ``N = d_state``, ``P = headdim``)::

    in_proj.weight   [2*d_inner + 2*G*N + nheads, d_model]   (no bias)
    conv1d.weight    [d_inner + 2*G*N, 1, d_conv]            (depthwise)
    conv1d.bias      [d_inner + 2*G*N]
    dt_bias, A_log, D [nheads]
    norm.weight      [d_inner]
    out_proj.weight  [d_model, d_inner]                      (no bias)

With SpatiaLoc's defaults (d_state 128, d_conv 4, expand 4, headdim 64,
ngroups 1): d_model 256 gives in_proj 2320 rows, 1280 conv channels and 16
heads; d_model 128 gives 1288 rows, 768 channels and 8 heads.

Forward, for u [B, L, d_model]::

    z, xBC, dt = split(in_proj(u))       [B,L,d_inner], [B,L,d_inner+2GN], [B,L,nheads]
    xBC = silu(causal_depthwise_conv(xBC))
    x, B, C = split(xBC)                 [B,L,nheads,P], [B,L,G,N], [B,L,G,N]
    dt = softplus(dt + dt_bias)          [B,L,nheads]
    A = -exp(A_log)                      [nheads], always negative
    per head h (sharing the B, C of its group):
        s_t = exp(dt_t A) s_{t-1} + dt_t x_t B_t^T        state s_t [P, N]
        y_t = s_t C_t + D x_t                             [P]
    y = RMSNorm(y * silu(z))             RMS over groups of d_inner/G channels, eps 1e-5
    out = out_proj(y)                    [B, L, d_model]

The recurrence is evaluated in chunks (``chunk_size``, 256 as in
``mamba_ssm``): inside a chunk through its quadratic "attention-like" form
``y_t = sum_{s<=t} (C_t . B_s) exp(sum_{s<r<=t} dt_r A) dt_s x_s``, and between
chunks by carrying the state. For SpatiaLoc's lengths there is a single chunk.

The model is causal: the output at t depends on inputs at positions <= t
only. For an order-free set, average it with a pass over the reversed
sequence (``x.flip(1)`` with ``mask.flip(1)``; the padding then sits at the
start, which the mask handles exactly, see :meth:`Mamba2.forward`).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Mamba2", "RMSNormGated", "make_mamba2", "ssd_scan"]


def _compute_dtype(dtype):
    """float32 for half-precision inputs (as ``mamba_ssm``'s kernels), else ``dtype``."""
    return torch.promote_types(dtype, torch.float32)


class RMSNormGated(nn.Module):
    """RMSNorm with an optional SiLU gate (``mamba_ssm``'s gated ``RMSNorm``).

    ``norm_before_gate=False``: ``RMSNorm(x * silu(z))``; ``True``:
    ``RMSNorm(x) * silu(z)``. The mean of squares is taken over groups of
    ``group_size`` channels (all channels when None). Computed in at least
    float32.
    """

    def __init__(self, hidden_size, eps=1e-5, group_size=None, norm_before_gate=True,
                 device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.group_size = hidden_size if group_size is None else group_size
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x, z=None):
        dtype = x.dtype
        x = x.to(_compute_dtype(dtype))
        z = None if z is None else z.to(x.dtype)
        if z is not None and not self.norm_before_gate:
            x = x * F.silu(z)
        groups = x.unflatten(-1, (-1, self.group_size))           # [..., G, group_size]
        groups = groups * torch.rsqrt(groups.square().mean(-1, keepdim=True) + self.eps)
        out = groups.flatten(-2) * self.weight.to(x.dtype)
        if z is not None and self.norm_before_gate:
            out = out * F.silu(z)
        return out.to(dtype)


def _segment_sums(a):
    """[..., Q] -> [..., Q, Q]: entry (t, s) = a_{s+1} + ... + a_t for s <= t, else -inf.

    Summing the masked entries (rather than differencing a cumulative sum)
    keeps exp() of it accurate when the sums are large.
    """
    q = a.shape[-1]
    ones = torch.ones(q, q, dtype=torch.bool, device=a.device)
    terms = a.unsqueeze(-1).expand(*a.shape, q)                   # (r, s) -> a_r
    sums = terms.masked_fill(~ones.tril(-1), 0).cumsum(-2)        # sum over s < r <= t
    return sums.masked_fill(~ones.tril(), -math.inf)


def ssd_scan(x, dt, A, B, C, chunk_size=256):
    """The selective scan, without the D skip; zero initial state.

    x [b, L, h, p], dt [b, L, h] (after softplus), A [h] (negative),
    B, C [b, L, g, n] with h divisible by g (head i reads group i // (h / g),
    as in ``mamba_ssm``). Returns y [b, L, h, p] with, per head,
    ``s_t = exp(dt_t A) s_{t-1} + dt_t x_t B_t^T`` and ``y_t = s_t C_t``.
    A step with dt = 0 leaves the state unchanged and adds nothing to it.
    """
    b, length, h, p = x.shape
    g, n = B.shape[-2:]
    k = h // g                                                    # heads per group
    q = min(chunk_size, max(length, 1))                           # steps per chunk
    pad = -length % q
    if pad:  # trailing steps with dt = 0 and x = 0: they change nothing before them
        x, dt, B, C = (F.pad(v, (0, 0) * (v.dim() - 2) + (0, pad)) for v in (x, dt, B, C))
    c = (length + pad) // q

    # Chunked layouts: [b, chunk, group, head-in-group, step, ...]
    xdt = (x * dt.unsqueeze(-1)).reshape(b, c, q, g, k, p).permute(0, 1, 3, 4, 2, 5)
    a = (dt * A).reshape(b, c, q, g, k).permute(0, 1, 3, 4, 2)    # [b, c, g, k, q], <= 0
    Bc = B.reshape(b, c, q, g, n).transpose(2, 3)                  # [b, c, g, q, n]
    Cc = C.reshape(b, c, q, g, n).transpose(2, 3)

    # Within a chunk: y_t = sum_{s<=t} (C_t . B_s) exp(a_{s+1} + ... + a_t) xdt_s
    scores = (Cc @ Bc.transpose(-1, -2)).unsqueeze(3)              # [b, c, g, 1, q, q]
    y = (scores * torch.exp(_segment_sums(a))) @ xdt               # [b, c, g, k, q, p]

    if c > 1:  # add what the states carried in from earlier chunks contribute
        a_cum = a.cumsum(-1)
        to_end = torch.exp(a_cum[..., -1:] - a_cum).unsqueeze(-1)  # [b, c, g, k, q, 1]
        new = (xdt * to_end).transpose(-1, -2) @ Bc.unsqueeze(3)   # [b, c, g, k, p, n]
        chunk_decay = torch.exp(a_cum[..., -1])[..., None, None]   # [b, c, g, k, 1, 1]
        carried = [torch.zeros_like(new[:, 0])]
        for i in range(c - 1):
            carried.append(carried[-1] * chunk_decay[:, i] + new[:, i])
        carried = torch.stack(carried, 1)                          # state entering each chunk
        y = y + (Cc.unsqueeze(3) @ carried.transpose(-1, -2)) * torch.exp(a_cum).unsqueeze(-1)

    return y.permute(0, 1, 4, 2, 3, 5).reshape(b, c * q, h, p)[:, :length]


class Mamba2(nn.Module):
    """Mamba-2 mixer: [B, L, d_model] -> [B, L, d_model]; see the module docstring.

    Arguments and initialisation are those of ``mamba_ssm.Mamba2`` except the
    default ``expand`` (4, SpatiaLoc's, instead of 2): ``dt_bias`` is the
    inverse softplus of dt ~ log-uniform[dt_min, dt_max] (floored at
    dt_init_floor), A ~ U(A_init_range) stored as ``A_log = log A``, D = 1,
    norm weight 1, linear and conv layers PyTorch's defaults (or conv weights
    U(-conv_init, conv_init)), drawn in the same order, so the same seed on
    the same device gives the same initial parameters. ``chunk_size`` only
    changes how the scan is evaluated; ``layer_idx`` is accepted and unused.
    """

    def __init__(self, d_model, d_state=128, d_conv=4, conv_init=None, expand=4, headdim=64,
                 ngroups=1, A_init_range=(1, 16), D_has_hdim=False, rmsnorm=True,
                 norm_before_gate=False, dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4,
                 dt_limit=(0.0, float("inf")), bias=False, conv_bias=True, chunk_size=256,
                 layer_idx=None, device=None, dtype=None):
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = expand * d_model
        self.headdim = headdim
        self.ngroups = ngroups
        if self.d_inner % headdim:
            raise ValueError(f"expand * d_model = {self.d_inner} is not a multiple of "
                             f"headdim {headdim}")
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups:
            raise ValueError(f"{self.nheads} heads cannot be split into {ngroups} groups")
        self.D_has_hdim = D_has_hdim
        self.rmsnorm = rmsnorm
        self.norm_before_gate = norm_before_gate
        self.dt_limit = tuple(dt_limit)
        self.chunk_size = chunk_size
        self.layer_idx = layer_idx

        # in_proj output, in order: z [d_inner], x [d_inner], B [G*N], C [G*N], dt [nheads]
        self.in_proj = nn.Linear(
            d_model, 2 * self.d_inner + 2 * ngroups * d_state + self.nheads, bias=bias, **factory)
        conv_dim = self.d_inner + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)

        dt = torch.exp(torch.rand(self.nheads, **factory)
                       * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        A = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(dtype=dtype))
        self.D = nn.Parameter(torch.ones(self.d_inner if D_has_hdim else self.nheads,
                                         device=device))
        for param in (self.dt_bias, self.A_log, self.D):
            param._no_weight_decay = True  # read by optimiser parameter grouping

        if rmsnorm:
            self.norm = RMSNormGated(self.d_inner, eps=1e-5, norm_before_gate=norm_before_gate,
                                     group_size=self.d_inner // ngroups, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    @property
    def A(self):
        """The per-head decay rates, -exp(A_log) [nheads] (at least float32; always < 0)."""
        return -torch.exp(self.A_log.to(_compute_dtype(self.A_log.dtype)))

    def forward(self, u, mask=None):
        """u [B, L, d_model], mask [B, L] bool (True = valid) or None -> [B, L, d_model].

        Padded positions (mask False) do not affect valid ones: they enter the
        causal conv as zeros (which is also what the conv sees before the
        first step) and take a step dt = 0, which leaves the state unchanged.
        So a sequence padded at the end or at the start gives, at its valid
        positions, the outputs it gives alone and unpadded. (A gap in the
        middle is skipped by the state but reads as zeros in the conv window.)
        Outputs at padded positions are zero. Note the sense: True marks a
        valid position (the opposite of attention's ``key_padding_mask``).
        """
        length = u.shape[1]
        G, N = self.ngroups, self.d_state
        z, xBC, dt = self.in_proj(u).split(
            [self.d_inner, self.d_inner + 2 * G * N, self.nheads], dim=-1)
        if mask is not None:
            pad = ~mask.unsqueeze(-1)                                  # [B, L, 1]
            xBC = xBC.masked_fill(pad, 0)
        xBC = self.conv1d(xBC.transpose(1, 2))[..., :length]           # causal: first L outputs
        xBC = F.silu(xBC.transpose(1, 2))                              # [B, L, d_inner + 2GN]
        x, B, C = xBC.split([self.d_inner, G * N, G * N], dim=-1)

        f32 = _compute_dtype(u.dtype)
        dt = F.softplus(dt.to(f32) + self.dt_bias.to(f32))             # [B, L, nheads]
        if self.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(*self.dt_limit)
        if mask is not None:
            dt = dt.masked_fill(pad, 0)

        x = x.to(f32).unflatten(-1, (self.nheads, self.headdim))      # [B, L, nheads, P]
        y = ssd_scan(x, dt, self.A.to(f32), B.to(f32).unflatten(-1, (G, N)),
                     C.to(f32).unflatten(-1, (G, N)), self.chunk_size)
        D = self.D.to(f32)
        D = D.view(self.nheads, self.headdim) if self.D_has_hdim else D.unsqueeze(-1)
        y = (y + x * D).flatten(-2).to(u.dtype)                        # [B, L, d_inner]

        y = self.norm(y, z) if self.rmsnorm else y * F.silu(z)
        out = self.out_proj(y)
        if mask is not None:
            out = out.masked_fill(pad, 0)
        return out


def make_mamba2(d_model, prefer_fused=True, **kwargs):
    """A Mamba-2 mixer, ``mamba_ssm``'s fused one when it can run here.

    With ``prefer_fused``, ``mamba_ssm`` importable and CUDA available, this
    returns a subclass of ``mamba_ssm.Mamba2`` built with the same arguments
    (``expand`` defaulting to 4 here too) whose ``forward(u, mask=None)``
    zeros the outputs at padded positions; otherwise :class:`Mamba2`. Both
    have the same ``state_dict``. The fused forward leaves padding to the
    model's causality, so it matches :class:`Mamba2` only for padding at the
    end of a sequence.
    """
    kwargs.setdefault("expand", 4)
    if prefer_fused and torch.cuda.is_available():
        try:
            from mamba_ssm import Mamba2 as FusedBase
        except ImportError:
            FusedBase = None
        if FusedBase is not None:
            class FusedMamba2(FusedBase):
                def forward(self, u, mask=None):
                    out = super().forward(u)
                    return out if mask is None else out.masked_fill(~mask.unsqueeze(-1), 0)

            return FusedMamba2(d_model, **kwargs)
    return Mamba2(d_model, **kwargs)
