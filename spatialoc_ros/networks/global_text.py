"""Global text descriptor Q_glo from the hint features H ("Atten & Pooling").

SpatiaLoc (arXiv 2601.03579) §3.3 describes it as "a stacked architecture
consisting of attention and maxpooling layers"; the Mamba2 in front of the
attention is the reference code's.

For H [B, Q, D] (the un-normalised hint features, 1..Q hints per query,
padded at the end) and mask [B, Q]::

    h = Mamba2(H)                     bare mixer: no residual, no norm around it
    h = TEL(h)                        TEL(D, 4 heads, ff 4D), padded hints masked as keys
    Q_glo = L2(max over valid hints of h)     [B, D]

The reference code wraps the TEL in a second residual (x + TEL(x)); here
the TEL's own residuals are the only ones. The code has
no padding mask because it always sees 6 hints; here the hint count may
vary, and padding never changes Q_glo (Mamba2 steps over padded hints with
dt = 0 and, being causal, never lets trailing padding reach valid hints).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .masking import check_padding_mask, masked_max
from .mamba import make_mamba2

__all__ = ["GlobalTextEncoder"]


class GlobalTextEncoder(nn.Module):
    """H [B, Q, D], mask [B, Q] -> Q_glo [B, D] (unit norm)."""

    def __init__(self, d: int = 256, dropout: float = 0.1):
        super().__init__()
        self.d = d
        # d_state 128, d_conv 4, expand 4, headdim 64 (see .mamba); mamba_ssm's kernel on CUDA
        self.mamba = make_mamba2(d)
        self.tel = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout, batch_first=True)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """h [B, Q, D], mask [B, Q] bool (True = valid hint, padding at the end) -> [B, D]."""
        check_padding_mask(mask, h.shape[1])
        pad = ~mask
        h = h.masked_fill(pad.unsqueeze(-1), 0.0)
        h = self.mamba(h, mask)
        h = self.tel(h, src_key_padding_mask=pad)
        return F.normalize(masked_max(h, mask), dim=-1)
