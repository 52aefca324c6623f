"""Per-sentence features of a frozen hint encoder, computed once for a fixed set of sentences.

Both stages start from the same step (SpatiaLoc, arXiv 2601.03579, §3.2): each hint sentence's
token embeddings go through a token LSTM and a Transformer layer, are max-pooled and projected to
one feature vector per sentence (:meth:`~..networks.hint_encoder.HintEncoder.sentences`). In eval
mode that vector depends on the sentence alone, and the language front end
(:mod:`.language`) only ever produces sentences from a fixed set
(:func:`.language.canonical_sentences`, 840 with the shipped vocabulary). So the serving core
computes them once per model when it starts, and a query only runs what depends on the whole
description: the LSTM over its hints, the scene graph, the global text descriptor.

Shapes: S sentences, D the hint encoder's width.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch

BATCH = 256  # sentences per forward pass when filling the table


class SentenceFeatures:
    """``hints``: a hint encoder (``sentences(tokens, token_mask) -> [S, D]``) in eval mode;
    ``sentences``: the sentences to keep, their token embeddings read from ``text`` (a
    :class:`~.text_cache.TextCache`)."""

    def __init__(self, hints, text, sentences: Sequence[str] = (), device="cpu"):
        self.hints, self.device = hints, torch.device(device)
        unique = list(dict.fromkeys(sentences))
        parts = [self._compute(unique[s:s + BATCH], text) for s in range(0, len(unique), BATCH)]
        self._table = torch.cat(parts) if parts else None
        self._rows: Dict[str, int] = {s: i for i, s in enumerate(unique)}

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, sentence: str) -> bool:
        return sentence in self._rows

    @torch.inference_mode()
    def _compute(self, sentences: Sequence[str], text) -> torch.Tensor:
        tokens, mask = text.get(list(sentences))
        return self.hints.sentences(tokens.to(self.device), mask.to(self.device))

    def features(self, sentences: Sequence[str], text) -> torch.Tensor:
        """[S, D] on the device: the kept rows, and the other sentences computed from ``text``'s
        token embeddings (encoding them there if new)."""
        rows = [self._rows.get(s) for s in sentences]
        other = [i for i, r in enumerate(rows) if r is None]
        if not other:
            return self._table[self._index(rows)]
        computed = self._compute([sentences[i] for i in other], text)
        out = computed.new_empty(len(sentences), computed.shape[1])
        out[self._index(other)] = computed
        kept = [i for i, r in enumerate(rows) if r is not None]
        if kept:
            out[self._index(kept)] = self._table[self._index([rows[i] for i in kept])]
        return out

    def _index(self, rows) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=self.device)
