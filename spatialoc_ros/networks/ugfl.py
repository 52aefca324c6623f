"""The fine stage: UGFL, uncertainty-guided fine localisation inside one cell.

SpatiaLoc (arXiv 2601.03579) §3.4, Eq. (16). The reference SpatiaLoc code has
no UGFL, so the fusion follows the paper's text and MambaPlace's fine stage,
the public code closest to it.

Text side: token embeddings -> its own HintEncoder -> H [B, Q, D]
    (no Mamba and no scene graph on the text side of the fine stage).
Cell side: the coarse stage's object inputs (a ``CellBank.batch``)
    -> its own ObjectEncoder -> L2-normalised O [B, N, D].
Fusion (alternating cross-attention and Mamba, paper §3.4), ``rounds`` = 2 times::

    O <- TDL(O, memory H)          objects attend to hints (self-attn, cross-attn, FFN)
    O <- O + Mamba2_O(LN(O))       along the object axis; forward and reversed scan averaged
    H <- TDL(H, memory O)          hints attend to the updated objects
    H <- H + Mamba2_H(LN(H))       along the hint axis

    f_u = max over valid hints of H            [B, D]
    delta = MLP(f_u)                           [B, 2]  offset from the cell centre
    lambda = clamp(softplus(MLP(f_u)) + 1e-3, 1e-3, 1e3)   [B] precision (Eq. (16))

The cross-attention output is what enters each Mamba's state (the "injection"
of paper §3.4). Mambas are batch-first (MambaPlace's code scanned across the
batch) and have their own weights per round and axis (MambaPlace shares one).
Objects are a set, so the object Mamba averages a scan over the valid objects
with one over them in reverse order, and training shuffles them (the reference
code's fine training puts the hinted objects first, which leaks the answer to
an order-sensitive model). Every attention gets key-padding masks and the
Mambas skip padded steps, so padded objects and hints never change a result
(nothing reproduces the reference code's unmasked padding: padding here is
real padding, not "pad" objects).

Position: the predicted cell-normalised xy is (0.5, 0.5) + delta, in the frame
of :meth:`Cell.to_cell <spatialoc_ros.data.schema.Cell.to_cell>` (and of the
object centres: (world - bbox min) / cell size), i.e. world = bbox min +
(0.5 + delta) * cell size.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .hint_encoder import HintEncoder
from .mamba import make_mamba2
from .masking import check_padding_mask, l2_normalize, masked_max
from .object_encoder import ObjectEncoder

__all__ = ["FineConfig", "FineModel", "FineOutputs", "MIN_PRECISION", "MAX_PRECISION"]

MIN_PRECISION, MAX_PRECISION = 1e-3, 1e3  # lambda floor (softplus + 1e-3) and safety clamp


@dataclass
class FineConfig:
    d: int = 128  # fusion width (fine_embed_dim); 4 d must be a multiple of Mamba2's headdim 64
    token_dim: int = 384  # hidden size of the frozen text encoder (MiniLM 384, T5-large 1024)
    point_dim: int = 256  # PointNet++ feature width
    max_objects: int = 28  # object slots per cell of the shared cell bank (the coarse stage's)
    rounds: int = 2  # fusion rounds N
    heads: int = 4  # attention heads of the fusion layers
    bidirectional_mamba: bool = True  # average a reversed scan in on the object axis
    precision_head: bool = True  # False = the paper's "w/o probability" ablation (no lambda)

    @classmethod
    def from_dict(cls, d: dict) -> "FineConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FineOutputs:
    """offset [B, 2]: delta from the cell centre, cell-normalised; precision [B]: lambda > 0, or
    None."""

    offset: torch.Tensor
    precision: Optional[torch.Tensor] = None

    @property
    def position(self) -> torch.Tensor:
        """Predicted xy in cell-normalised coordinates [B, 2] (0.5 + delta)."""
        return self.offset + 0.5


def reverse_valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x [B, L, ...] with the first ``lengths[b]`` entries of each row reversed; padding stays put.

    Its own inverse. Keeping the padding at the end lets the reversed scan use
    the same end-padded masks as the forward one.
    """
    pos = torch.arange(x.shape[1], device=x.device)
    n = lengths.to(pos.device).unsqueeze(1)
    index = torch.where(pos < n, n - 1 - pos, pos)  # [B, L]
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


class MambaResidual(nn.Module):
    """x + Mamba2(LN(x)) over a padded sequence [B, L, D]; bidirectional = mean of both scan
    orders.

    Both directions share the mixer's weights: the reversed pass is the same
    scan read from the last valid element to the first.
    """

    def __init__(self, d: int, bidirectional: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mamba = make_mamba2(d)  # d_state 128, d_conv 4, expand 4, headdim 64 (see .mamba)
        self.bidirectional = bidirectional

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        if self.bidirectional:  # both scan orders in one batch: the mixer's rows are independent
            lengths = mask.sum(1)
            both = self.mamba(torch.cat([y, reverse_valid(y, lengths)]), mask.repeat(2, 1))
            out, back = both.chunk(2)
            out = 0.5 * (out + reverse_valid(back, lengths))
        else:
            out = self.mamba(y, mask)
        return (x + out) * mask.unsqueeze(-1)


class UGFLRound(nn.Module):
    """One round of the alternating fusion: objects <- hints, then hints <- objects."""

    def __init__(self, d: int, heads: int, bidirectional: bool, dropout: float = 0.1):
        super().__init__()
        self.objects_attend = nn.TransformerDecoderLayer(d, heads, 4 * d, dropout,
                                                         batch_first=True)
        self.objects_mamba = MambaResidual(d, bidirectional)
        self.hints_attend = nn.TransformerDecoderLayer(d, heads, 4 * d, dropout,
                                                       batch_first=True)
        self.hints_mamba = MambaResidual(d, bidirectional=False)

    def forward(self, h, hint_mask, o, object_mask) -> Tuple[torch.Tensor, torch.Tensor]:
        hint_pad, object_pad = ~hint_mask, ~object_mask
        o = self.objects_attend(o, h, tgt_key_padding_mask=object_pad,
                                memory_key_padding_mask=hint_pad)
        o = self.objects_mamba(o * object_mask.unsqueeze(-1), object_mask)
        h = self.hints_attend(h, o, tgt_key_padding_mask=hint_pad,
                              memory_key_padding_mask=object_pad)
        h = self.hints_mamba(h * hint_mask.unsqueeze(-1), hint_mask)
        return h, o


def _head(d: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, out))


class FineModel(nn.Module):
    """Hints of a query and the objects of one cell -> offset of the pose from the cell centre
    (+ lambda)."""

    def __init__(self, cfg: Optional[FineConfig] = None):
        super().__init__()
        cfg = cfg or FineConfig()
        self.cfg = cfg
        self.hints = HintEncoder(cfg.token_dim, cfg.d)
        self.objects = ObjectEncoder(cfg.d, cfg.point_dim)
        self.fusion = nn.ModuleList(UGFLRound(cfg.d, cfg.heads, cfg.bidirectional_mamba)
                                    for _ in range(cfg.rounds))
        self.offset_head = _head(cfg.d, 2)
        # the untrained model predicts the cell centre: the coarse-only baseline, in which each
        # retrieved cell predicts its centre
        nn.init.zeros_(self.offset_head[-1].weight)
        nn.init.zeros_(self.offset_head[-1].bias)
        self.precision_mlp = _head(cfg.d, 1) if cfg.precision_head else None

    def encode_text(self, tokens, token_mask, hint_index, hint_mask,
                    sentence_features=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """tokens [S, L, Dt], token_mask [S, L]; hint_index / hint_mask [B, Q] -> (H [B, Q, D],
        hint_mask).

        Each sentence row of ``tokens`` is encoded once however many queries
        point at it, so one query against K cells repeats only ``hint_index``.
        ``sentence_features`` [S, D]: ``self.hints.sentences`` of the rows, computed before
        (eval mode; the tokens are then not read).
        """
        check_padding_mask(hint_mask, hint_index.shape[1])
        return self.hints(tokens, token_mask, hint_index, hint_mask, sentence_features), hint_mask

    def encode_cells(self, point_features, colors, centers, counts,
                     mask) -> Tuple[torch.Tensor, torch.Tensor]:
        """Padded object inputs [B, N, ...] and mask [B, N] -> (L2-normalised O [B, N, D],
        mask)."""
        check_padding_mask(mask, mask.shape[1])
        o = self.objects(point_features, colors, centers, counts, mask)
        return l2_normalize(o, mask), mask

    def locate(self, h, hint_mask, o, object_mask) -> FineOutputs:
        """Fuse encoded hints [B, Q, D] and objects [B, N, D] (row b with row b) into the
        outputs."""
        for block in self.fusion:
            h, o = block(h, hint_mask, o, object_mask)
        f_u = masked_max(h, hint_mask)
        offset = self.offset_head(f_u)
        if self.precision_mlp is None:
            return FineOutputs(offset=offset)
        raw = self.precision_mlp(f_u).squeeze(-1)
        precision = (F.softplus(raw) + MIN_PRECISION).clamp(MIN_PRECISION, MAX_PRECISION)
        return FineOutputs(offset=offset, precision=precision)

    def forward(self, text: dict, cells: dict) -> FineOutputs:
        """Paired batch: ``text`` from ``text_batch(cache, hints)``, ``cells`` from
        ``CellBank.batch(rows)``."""
        h, hint_mask = self.encode_text(**text)
        o, object_mask = self.encode_cells(**cells)
        return self.locate(h, hint_mask, o, object_mask)
