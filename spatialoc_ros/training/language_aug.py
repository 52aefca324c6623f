"""Training descriptions in other words: the paraphrase generator, read back by the front end.

The models see what the language front end (:mod:`..core.language`) makes of
what people say, not the benchmark's template alone: with probability
``prob`` a training query's facts are said again by the paraphrase generator
(:func:`..data.paraphrase.augment_description`: other sentence frames,
synonyms, relations stated from the object, speech-style run-on text, fewer
hints, colours left out; training words only, the held-out ones are kept for
evaluation) and read back by the front end. The models so learn from
descriptions with three to six hints, hints without a colour and whatever the
front end gets wrong. A reading that keeps no hint falls back to the template.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from ..core.language import LanguageFrontEnd, canonical_sentences


class LanguageAugmentation:
    """``augment(ids, hint_lists, rng)``: the hints of a batch, some of them said again."""

    def __init__(self, poses: Sequence, encoder, prob: float):
        from ..data.paraphrase import facts_of

        self.prob = float(prob)
        self.facts = [facts_of(p) for p in poses]
        self.front_end = LanguageFrontEnd(encoder)

    @staticmethod
    def sentences() -> List[str]:
        """Every hint sentence a reading can produce (for the text cache)."""
        return canonical_sentences()

    def __call__(self, ids: Sequence[int], hint_lists: Sequence[List[str]],
                 rng: np.random.Generator) -> List[List[str]]:
        from ..data.paraphrase import augment_description

        if self.prob <= 0:
            return [list(h) for h in hint_lists]
        chosen = [j for j in range(len(ids)) if rng.random() < self.prob]
        texts = [augment_description(self.facts[ids[j]], rng) for j in chosen]
        out = [list(h) for h in hint_lists]
        for j, understanding in zip(chosen, self.front_end.understand_many(texts)):
            if understanding.hints:
                out[j] = understanding.hints
        return out
