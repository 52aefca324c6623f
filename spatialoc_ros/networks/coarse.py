"""The coarse stage: text and cells into the descriptors that retrieval compares.

SpatiaLoc (arXiv 2601.03579) §3.2-3.3; each module's docstring names its part.

Text side:  token embeddings -> HintEncoder -> H [B, Q, D]
    H -> TextSceneGraph     -> F_Object_T, F_Relation_T   (instance level)
    H -> GlobalTextEncoder  -> Q_glo                      (global, Mamba2 + attention)
Cell side:  object inputs -> ObjectEncoder -> X [C, N, D]
    X -> BEOSE + GA         -> F_Object_P, F_Relation_P   (instance level)
    l2(X) -> FAE            -> P_glo                      (global, frequency domain)

The configuration holds only the switches of the paper's ablations (Tables 4-5):
``ablate_beose`` (w/o BEOSE), ``ga_mode="maxpool"`` (w/o GA), ``ablate_fae`` (w/o FAE),
and ``global_only`` (SpatiaLoc (Global): no instance-level branches at all).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from torch import nn

from .beose import ObjectRelationEncoder
from .fae import FAE
from .global_text import GlobalTextEncoder
from .hint_encoder import HintEncoder
from .masking import l2_normalize
from .object_encoder import ObjectEncoder
from .outputs import CoarseOutputs
from .text_graph import TextSceneGraph


@dataclass
class CoarseConfig:
    d: int = 256  # embedding width
    token_dim: int = 384  # hidden size of the frozen text encoder (MiniLM 384, T5-large 1024)
    point_dim: int = 256  # PointNet++ feature width
    max_objects: int = 28  # object slots per cell (the first objects in cell order)
    iterations: int = 3  # BEOSE and text scene-graph iterations
    ablate_beose: bool = False
    ga_mode: str = "gaussian"  # "maxpool" = w/o GA
    ablate_fae: bool = False
    global_only: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "CoarseConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


class CoarseModel(nn.Module):
    def __init__(self, cfg: CoarseConfig):
        super().__init__()
        self.cfg = cfg
        self.hints = HintEncoder(cfg.token_dim, cfg.d)
        self.global_text = GlobalTextEncoder(cfg.d)
        self.objects = ObjectEncoder(cfg.d, cfg.point_dim)
        self.fae = FAE(cfg.d, ablate=cfg.ablate_fae)
        if not cfg.global_only:
            self.text_graph = TextSceneGraph(cfg.d, cfg.iterations, ga_mode=cfg.ga_mode)
            self.relations = ObjectRelationEncoder(cfg.d, cfg.iterations, cfg.ablate_beose,
                                                   cfg.ga_mode)

    def encode_text(self, tokens, token_mask, hint_index, hint_mask,
                    sentence_features=None) -> CoarseOutputs:
        """tokens [S, L, Dt], token_mask [S, L]; hint_index / hint_mask [B, Q] -> text
        descriptors. ``sentence_features`` [S, D]: ``self.hints.sentences`` of the rows, computed
        before (eval mode; the tokens are then not read)."""
        h = self.hints(tokens, token_mask, hint_index, hint_mask, sentence_features)
        out = CoarseOutputs(q_glo=self.global_text(h, hint_mask), t_mask=hint_mask)
        if not self.cfg.global_only:
            out.t_obj, out.t_rel = self.text_graph(h, hint_mask)
        return out

    def encode_cells(self, point_features, colors, centers, counts, mask) -> CoarseOutputs:
        """Padded object inputs [C, N, ...] and mask [C, N] -> cell descriptors."""
        x = self.objects(point_features, colors, centers, counts, mask)
        out = CoarseOutputs(p_glo=self.fae(l2_normalize(x, mask), mask), p_mask=mask)
        if not self.cfg.global_only:
            out.p_obj, out.p_rel = self.relations(x, centers, mask)
        return out

    def forward(self, text: dict, cells: dict) -> CoarseOutputs:
        """Paired batch: ``text`` and ``cells`` are keyword dicts of the two encoders."""
        t = self.encode_text(**text)
        c = self.encode_cells(**cells)
        return CoarseOutputs(q_glo=t.q_glo, p_glo=c.p_glo, t_obj=t.t_obj, t_rel=t.t_rel,
                             t_mask=t.t_mask, p_obj=c.p_obj, p_rel=c.p_rel, p_mask=c.p_mask)
