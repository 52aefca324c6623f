"""FAE, the Frequency-Aware Encoder: the global cell descriptor P_glo.

SpatiaLoc (arXiv 2601.03579) §3.3, Eqs. (11)-(13). This is the reference code's
block with padding masked throughout (the reference code masks nothing, so its
padded slots leak into the result): padded object slots never change the
descriptor of a cell. For x [B, N, D] (L2-normalised object embeddings, padded
at the end of each row) and mask [B, N]::

    u_k = x + W_k x                           k = 1, 2, 3 (per-object Linear + residual)
    v1  = |FFT(u1)| + x                       FFT along the D channels, not the objects
    v2  = Re(FFT(u2)) + Im(FFT(u2)) + x
    v3  = Re(IFFT(M * FFT(u3))) + x           M keeps bins m >= floor(0.7 D)
    a1  = SA(v1) + v1,  a2 = SA(v2),  a3 = SA(v3) + v3      one shared MHA(D, 2 heads)
    c1  = Attn(a2, a1, a1),  c2 = Attn(a2, a3, a3)          the same MHA; branch 2 queries
    enc = x + c1 * c2 * a2
    o   = MHA4(q=x, k=v=enc) + enc
    g   = BiGRU(o)                            [B, N, 2D], packed over the valid objects
    g   = TEL(g) + g                          TEL(2D, 4 heads, ff 256, GELU)
    y   = g[..., 0::2]                        even channels -> [B, N, D]
    P_glo = L2(max over valid objects of y)   [B, D]

The paper's "high-frequency" mask (eq. 12, 1[m >= 0.7T]) and the code use
the same index mask. For a real input the kept bins floor(0.7 D) .. D-1 are
the negative frequencies -(D - floor(0.7 D)) .. -1, so Re(IFFT(M * FFT(u)))
is exactly half of u band-passed to |f| in [1, D - floor(0.7 D)]: for D = 256
the lowest 77 non-DC frequencies at half amplitude, while the true high
frequencies 78..128 are dropped. We keep this as published.

``ablate=True`` is the "w/o FAE" variant of the paper's Table 5: Text2Loc's
object encoder, 2 x TEL(D, 4 heads, ff 512) over the objects, masked max, L2.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .masking import check_padding_mask, masked_max

__all__ = ["FAE", "high_index_filter"]


def high_index_filter(u: torch.Tensor) -> torch.Tensor:
    """Re(IFFT(M * FFT(u))) along the last axis, M keeping bins m >= floor(0.7 D) (eq. 12).

    u [..., D] real -> [..., D] real. See the module docstring for what this
    keeps (half of a low band for real inputs, not a high-pass).
    """
    d = u.shape[-1]
    start = (7 * d) // 10                       # floor(0.7 D) in exact integer arithmetic
    keep = torch.arange(d, device=u.device) >= start
    return torch.fft.ifft(torch.fft.fft(u, dim=-1) * keep, dim=-1).real


class FAE(nn.Module):
    """Frequency-Aware Encoder: x [B, N, D], mask [B, N] -> P_glo [B, D] (unit norm)."""

    def __init__(self, d: int = 256, ablate: bool = False, dropout: float = 0.1):
        super().__init__()
        self.d = d
        self.ablate = ablate
        if ablate:
            # Table 5 "w/o FAE": Text2Loc's obj_inter_module, built but unused in the code.
            self.layers = nn.ModuleList(
                nn.TransformerEncoderLayer(d, 4, 512, dropout, batch_first=True)
                for _ in range(2))
            return
        # 1x1 Conv1d in the code = a per-object Linear (same default initialisation).
        self.proj = nn.ModuleList(nn.Linear(d, d) for _ in range(3))
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)       # shared by 5 calls
        self.reattn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.gru = nn.GRU(d, d, batch_first=True, bidirectional=True)
        self.tel = nn.TransformerEncoderLayer(2 * d, 4, 256, dropout, activation="gelu",
                                              batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, N, D] (L2-normalised rows; padded rows are ignored), mask [B, N] -> [B, D]."""
        return F.normalize(masked_max(self.encode(x, mask), mask), dim=-1)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-object features before pooling: [B, N, D] (values at padded slots are arbitrary)."""
        lengths = check_padding_mask(mask, x.shape[1])
        pad = ~mask
        x = x.masked_fill(pad.unsqueeze(-1), 0.0)   # padding values cannot matter, even inf/nan
        if self.ablate:
            for layer in self.layers:
                x = layer(x, src_key_padding_mask=pad)
            return x

        nu1, nu2, nu3 = self.branches(x)
        a1 = self._attend(nu1, nu1, pad) + nu1    # residuals on branches 1 and 3 only (as coded)
        a2 = self._attend(nu2, nu2, pad)
        a3 = self._attend(nu3, nu3, pad) + nu3
        c1 = self._attend(a2, a1, pad)
        c2 = self._attend(a2, a3, pad)
        enc = x + c1 * c2 * a2
        o = self.reattn(x, enc, enc, key_padding_mask=pad, need_weights=False)[0] + enc

        packed = pack_padded_sequence(o, lengths.cpu(), batch_first=True, enforce_sorted=False)
        g, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True,
                                   total_length=x.shape[1])              # [B, N, 2D]
        g = self.tel(g, src_key_padding_mask=pad) + g                   # the code's extra residual
        return g[..., 0::2]

    def branches(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three frequency branches (nu1, nu2, nu3), each [B, N, D], of x [B, N, D]."""
        u1, u2, u3 = (x + proj(x) for proj in self.proj)
        z1 = torch.fft.fft(u1, dim=-1)
        z2 = torch.fft.fft(u2, dim=-1)
        return z1.abs() + x, z2.real + z2.imag + x, high_index_filter(u3) + x

    def _attend(self, q: torch.Tensor, kv: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """The shared 2-head attention, query q over keys/values kv (padded keys masked)."""
        return self.attn(q, kv, kv, key_padding_mask=pad, need_weights=False)[0]
