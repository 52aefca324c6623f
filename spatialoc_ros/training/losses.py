"""Coarse-stage losses: set similarity, CCL and the total (arXiv 2601.03579 §3.2-3.3, Eqs. 9-15).

L_align is the reference code's complementary contrastive loss (CCL): only
negatives are penalised, by -log(1 - p), in both directions of a [B, B] score
matrix (rows = texts, columns = cells), each negative weighted by how close its
two descriptors are. The paper's eq. 10 taken literally would push the matched
pairs apart.

    L_Coarse = L_Global + L_IS + L_IO                                     (eq. 15)
    L_Global = CCL(Q P^T) + CCL(Q Q^T) + CCL(P P^T)                       (eq. 14)
    L_IS     = CCL(lambda(F_Relation_T, F_Relation_P))                    (§3.2)
    L_IO     = CCL(lambda(F_Object_T, F_Object_P))

The (Q, Q) and (P, P) self terms are the paper's; the code has only the
cross term. ``global_terms`` weights the three.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..networks.outputs import CoarseOutputs

__all__ = ["CoarseOutputs", "ccl_loss", "ccl_weights", "coarse_loss", "masked_mean",
           "set_similarity"]

_CHUNK_ELEMENTS = 1 << 24    # similarity entries per chunk of cells (64 MiB in float32)


def set_similarity(t: torch.Tensor, tmask: torch.Tensor, p: torch.Tensor, pmask: torch.Tensor,
                   chunk: Optional[int] = None) -> torch.Tensor:
    """lambda [B, C]: mean over valid hints of the max over valid objects of <t, p> (§7.1).

    t [B, Q, D], tmask [B, Q], p [C, N, D], pmask [C, N] (bool, True = valid;
    at least one valid entry per row). The text -> point direction of the
    code. Cells are processed ``chunk`` at a time (default: about 16 M
    similarity entries per chunk), so C may be a whole gallery.
    """
    if not bool(tmask.any(1).all()) or not bool(pmask.any(1).all()):
        raise ValueError("every query needs a valid hint and every cell a valid object")
    b, q, _ = t.shape
    c, n, _ = p.shape
    t = t.masked_fill(~tmask.unsqueeze(-1), 0.0)
    p = p.masked_fill(~pmask.unsqueeze(-1), 0.0)
    chunk = chunk or max(1, _CHUNK_ELEMENTS // max(1, b * q * n))
    hints = tmask.sum(1, keepdim=True)                                   # [B, 1]
    out = []
    for s in range(0, c, chunk):
        sim = torch.einsum("bqd,cnd->bcqn", t, p[s:s + chunk])           # [B, c, Q, N]
        sim = sim.masked_fill(~pmask[s:s + chunk, None, :].unsqueeze(0), float("-inf"))
        best = sim.amax(-1).masked_fill(~tmask.unsqueeze(1), 0.0)        # [B, c, Q]
        out.append(best.sum(-1) / hints)
    return torch.cat(out, dim=1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L2-normalised mean of x [B, N, D] over the valid slots of mask [B, N] -> [B, D]."""
    total = x.masked_fill(~mask.unsqueeze(-1), 0.0).sum(1)
    return F.normalize(total / mask.sum(1, keepdim=True).clamp_min(1), dim=-1)


def ccl_weights(a: torch.Tensor, b: torch.Tensor, alpha: float = 2.0,
                clip: float = 0.8) -> torch.Tensor:
    """Negative weights w [B, B], w[i, j] for text i and cell j (the reference code indexes
    its set-level weights [cell, text], i.e. transposed; here they follow the scores).

    a [B, D], b [B, D] (L2-normalised here). d_ij = |a_i - b_j| / max d;
    w = clip((1 - d + 1e-6)^(1 / alpha), clip, 1). Not detached (as the code):
    gradients flow through the weights too.
    """
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    d = (a.unsqueeze(1) - b.unsqueeze(0)).norm(dim=-1)                   # [B, B]
    d = d / d.max().clamp_min(1e-12)
    return (1.0 - d + 1e-6).pow(1.0 / alpha).clamp(clip, 1.0)


def _log_not(x: torch.Tensor) -> torch.Tensor:
    """log(1 - softmax(x, dim=1)) [B, B], accurate for every p (B >= 2).

    The code computes log(1 - p + 1e-10), which rounds to 0 for p below
    float precision and saturates when one negative takes nearly all the
    mass. Here small p use log1p(-p); large p use the exact identity
    log(1 - p_ij) = logsumexp_{k != j} x_ik - logsumexp_k x_ik.
    """
    bsz = x.shape[0]
    p = x.softmax(dim=1)
    others = ~torch.eye(bsz, dtype=torch.bool, device=x.device)         # [j, k]: k != j
    rest = x.unsqueeze(1).masked_fill(~others.unsqueeze(0), float("-inf"))  # [i, j, k]
    large = rest.logsumexp(-1) - x.logsumexp(1, keepdim=True)
    return torch.where(p < 0.5, torch.log1p(-p.clamp(max=0.5)), large)


def ccl_loss(scores: torch.Tensor, weights: Optional[torch.Tensor] = None,
             tau: float = 0.05) -> torch.Tensor:
    """CCL of a paired score matrix scores [B, B] (row i = text i, column j = cell j) -> scalar.

    p_tc = softmax over cells per text, p_ct = softmax over texts per cell;
    loss = mean_i sum_{j != i} w[i, j] (-log(1 - p_tc[i, j]))
         + mean_j sum_{i != j} w[i, j] (-log(1 - p_ct[j, i]))
    weights [B, B] indexed [text, cell] (None = all 1). The matched pairs
    (the diagonal) enter only through the softmax normalisation.
    """
    bsz = scores.shape[0]
    if scores.dim() != 2 or scores.shape[1] != bsz:
        raise ValueError(f"scores must be square [B, B], got {tuple(scores.shape)}")
    if bsz < 2:
        return scores.sum() * 0.0                                        # no negatives
    w = torch.ones_like(scores) if weights is None else weights
    neg = ~torch.eye(bsz, dtype=torch.bool, device=scores.device)
    x = scores / tau
    text_to_cell = -(w * _log_not(x)).masked_fill(~neg, 0.0).sum(1).mean()
    cell_to_text = -(w.t() * _log_not(x.t())).masked_fill(~neg, 0.0).sum(1).mean()
    return text_to_cell + cell_to_text


def _set_ccl(t: torch.Tensor, tmask: torch.Tensor, p: torch.Tensor, pmask: torch.Tensor,
             tau: float) -> torch.Tensor:
    """CCL of the set similarity, weights from the masked mean-pooled sets (Eqs. 9-10)."""
    weights = ccl_weights(masked_mean(t, tmask), masked_mean(p, pmask))
    return ccl_loss(set_similarity(t, tmask, p, pmask), weights, tau)


def coarse_loss(outputs: CoarseOutputs, use_is: bool = True, use_io: bool = True,
                use_global: bool = True, global_terms: Sequence[float] = (1, 1, 1),
                tau: float = 0.05) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """L_Coarse (eq. 15) of a paired batch -> (total, parts).

    Switches (Table 4): ``use_is`` (L_IS), ``use_io`` (L_IO), ``use_global``
    (L_Global); ``global_terms`` = weights of the (Q, P), (Q, Q) and (P, P)
    terms of L_Global: paper 1/1/1, "only (P, P) retained" 1/0/1, code 1/0/0.
    A term with weight 0 is not computed. ``parts`` holds the detached
    values of the computed terms ("global_cross", "global_qq", "global_pp",
    "global", "is", "io") and "total".
    """
    terms: Dict[str, torch.Tensor] = {}
    if use_global:
        outputs.require("q_glo", "p_glo")
        q = F.normalize(outputs.q_glo, dim=-1)
        p = F.normalize(outputs.p_glo, dim=-1)
        for name, weight, a, b in zip(("global_cross", "global_qq", "global_pp"),
                                      global_terms, (q, q, p), (p, q, p)):
            if weight:
                terms[name] = weight * ccl_loss(a @ b.t(), ccl_weights(a, b), tau)
    if use_is:
        outputs.require("t_rel", "t_mask", "p_rel", "p_mask")
        terms["is"] = _set_ccl(outputs.t_rel, outputs.t_mask, outputs.p_rel, outputs.p_mask,
                               tau)
    if use_io:
        outputs.require("t_obj", "t_mask", "p_obj", "p_mask")
        terms["io"] = _set_ccl(outputs.t_obj, outputs.t_mask, outputs.p_obj, outputs.p_mask,
                               tau)
    if not terms:
        raise ValueError("every loss term is switched off")
    total = sum(terms.values())
    parts = {name: value.detach() for name, value in terms.items()}
    global_parts = [v for k, v in parts.items() if k.startswith("global_")]
    if global_parts:
        parts["global"] = sum(global_parts)
    parts["total"] = total.detach()
    return total, parts
