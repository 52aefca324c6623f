"""Text inputs of the coarse model from cached token embeddings."""
from __future__ import annotations

from typing import Dict, Sequence

import torch

from .text_cache import batch_hints


def text_batch(cache, hints: Sequence[Sequence[str]]) -> Dict[str, torch.Tensor]:
    """Keyword inputs of ``CoarseModel.encode_text`` for queries given as hint lists.

    Each unique sentence of the batch is encoded once: ``tokens`` [S, L, Dt] and
    ``token_mask`` [S, L] from the cache; ``hint_index`` / ``hint_mask`` [B, Q]
    point each query's hints at those rows (queries may have any number of hints).
    """
    unique = list(dict.fromkeys(s for h in hints for s in h))
    tokens, token_mask = cache.get(unique)
    hint_index, hint_mask = batch_hints(hints, {s: i for i, s in enumerate(unique)})
    return dict(tokens=tokens, token_mask=token_mask, hint_index=hint_index, hint_mask=hint_mask)
