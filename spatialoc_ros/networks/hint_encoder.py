"""Hint features H [B, Q, D] from frozen token embeddings, with padding masked.

H is the paper's language features T (SpatiaLoc, arXiv 2601.03579, §3.2); the
layers below follow the reference code.

Per sentence: a token LSTM and one Transformer encoder layer over the tokens,
then a max over the valid tokens and Linear + BN down to D. Per query: an LSTM
over its hints, run per description (the reference code ran it over the whole
batch as one sequence, so a query's features depended on the rest of its
batch). Padded tokens and padded hints never
change a result.
"""
from __future__ import annotations

import torch
from torch import nn

from .masking import masked_max, mlp_bn


class HintEncoder(nn.Module):
    def __init__(self, token_dim: int, d: int = 256, heads: int = 4, token_lstm: bool = True):
        super().__init__()
        self.token_lstm = nn.LSTM(token_dim, token_dim, batch_first=True) if token_lstm else None
        self.intra = nn.TransformerEncoderLayer(token_dim, heads, 4 * token_dim, dropout=0.1,
                                                batch_first=True)
        # The layer's last LayerNorm keeps a zero shift instead of a learnable one: a
        # per-channel shift passes through the max over tokens and is cancelled by
        # proj's BatchNorm in training, so it could never learn. It stays a tensor (a
        # buffer) because PyTorch's fused encoder-layer kernel expects one.
        del self.intra.norm2.bias
        self.intra.norm2.register_buffer("bias", torch.zeros(token_dim))
        self.proj = mlp_bn([token_dim, d])
        self.hint_lstm = nn.LSTM(d, d, batch_first=True)

    def upgrade_state_dict(self, state: dict, prefix: str) -> None:
        """Move an older checkpoint's learned ``intra.norm2.bias`` c into proj's running mean.

        max_t(y_t + c) = max_t(y_t) + c per channel, then W (m + c) = W m + W c, so in
        eval mode BatchNorm with mean (mu - W c) gives what the shift gave.
        """
        shift, weight = f"{prefix}intra.norm2.bias", f"{prefix}proj.0.weight"
        mean = f"{prefix}proj.1.running_mean"
        if shift in state and weight in state and mean in state:
            c = state[shift].float()
            if bool(c.any()):
                state[mean] = state[mean] - (state[weight].float() @ c).to(state[mean].dtype)
                state[shift] = torch.zeros_like(state[shift])

    def sentences(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Sentence features [S, D] from token embeddings [S, L, Dt] and their mask [S, L]."""
        x = tokens
        if self.token_lstm is not None:
            lengths = token_mask.sum(1).clamp(min=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                       enforce_sorted=False)
            x, _ = self.token_lstm(packed)
            x, _ = nn.utils.rnn.pad_packed_sequence(x, batch_first=True,
                                                    total_length=tokens.shape[1])
        x = self.intra(x, src_key_padding_mask=~token_mask)
        pooled = masked_max(x, token_mask)  # [S, Dt]
        return self.proj(pooled)

    def forward(self, tokens, token_mask, hint_index, hint_mask,
                sentence_features=None) -> torch.Tensor:
        """H [B, Q, D]; ``hint_index`` [B, Q] picks rows of ``tokens``, ``hint_mask`` [B, Q]
        marks real hints. ``sentence_features`` [S, D]: :meth:`sentences` of those rows computed
        before (a sentence's features depend on it alone once the model is in eval mode);
        ``tokens`` and ``token_mask`` are then not read."""
        s = (self.sentences(tokens, token_mask) if sentence_features is None
             else sentence_features)
        h = s[hint_index.clamp(min=0)] * hint_mask.unsqueeze(-1)
        lengths = hint_mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(h, lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.hint_lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                  total_length=h.shape[1])
        return out * hint_mask.unsqueeze(-1)
