"""Queries as the coarse stage consumes them: hint sentences, their cell, augmentations.

Training augments like the benchmark's reference loaders (Text2Pos / Text2Loc):
the hints of a query are shuffled, and a cell may be mirrored left-right or
up-down, which swaps "east"/"west" or "north"/"south" in the hints.
"""
from __future__ import annotations

import re
from typing import List, Sequence

import numpy as np

from ..data.schema import Pose

_SWAPS = {0: ("east", "west"), 1: ("north", "south")}


def flip_sentence(sentence: str, axis: int) -> str:
    """The hint as it reads after mirroring the cell along ``axis`` (0: x, 1: y)."""
    a, b = _SWAPS[axis]
    return re.sub(rf"\b({a}|{b})\b", lambda m: b if m.group(1) == a else a, sentence)


def pose_hints(pose: Pose) -> List[str]:
    return [h.text for h in pose.hints]


def augment(hints: Sequence[str], rng: np.random.Generator, flip_x: bool, flip_y: bool,
            shuffle: bool = True) -> List[str]:
    """Shuffled and mirrored hint sentences of one training query."""
    out = list(hints)
    if shuffle:
        out = [out[i] for i in rng.permutation(len(out))]
    if flip_x:
        out = [flip_sentence(s, 0) for s in out]
    if flip_y:
        out = [flip_sentence(s, 1) for s in out]
    return out


def size_grouped_batches(sizes: np.ndarray, batch_size: int, rng: np.random.Generator,
                         group: int = 50) -> List[np.ndarray]:
    """Random batches whose members have similar sizes (object counts of their cells).

    The order is shuffled, cut into groups of ``group`` batches, each group sorted by
    size and cut into batches, and the batches shuffled: every epoch sees every
    sample once, negatives stay diverse, and padding to the largest cell of a batch
    wastes little.
    """
    order = rng.permutation(len(sizes))
    batches = []
    span = batch_size * group
    for start in range(0, len(order), span):
        chunk = order[start:start + span]
        chunk = chunk[np.argsort(sizes[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches
