"""What every stage trainer starts from: the splits, their hints, the query subsets, the frozen
inputs.

Both stages read the same cell banks (every training cell, the run's slots and
seed) and the same token cache, so a coarse and a fine run on one dataset share
their cached files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np


@dataclass
class RunData:
    train: object  # SplitData
    val: object  # SplitData
    train_hints: List[List[str]]
    val_hints: List[List[str]]
    train_ids: np.ndarray  # the training queries used (all, or a fixed random subset)
    val_ids: np.ndarray
    banks: Dict[str, object]  # "train", "val" -> CellBank
    pointnet_info: dict
    text: object  # TextCache


def load_run_data(data: str, cache: Optional[str], pointnet: str, text_encoder: str,
                  max_objects: int, seed: int, rng: np.random.Generator,
                  max_train_queries: int = 0, max_val_queries: int = 0,
                  extra_sentences: Callable[[Sequence[Sequence[str]]], List[str]] = (
                      lambda hints: []),
                  progress: bool = True) -> RunData:
    """Load a KITTI360Pose folder's train and val splits with their cached frozen inputs.

    ``extra_sentences(train_hints)`` names sentences to cache beside the splits' own
    (the coarse stage's mirrored hints).
    """
    from ..data.kitti360pose import load_split
    from ..core.frozen_inputs import cache_dir, load_banks, load_text_cache
    from .queries import pose_hints

    train, val = load_split(data, "train"), load_split(data, "val")
    train_hints = [pose_hints(p) for p in train.poses]
    val_hints = [pose_hints(p) for p in val.poses]
    train_ids = np.arange(len(train.poses))
    if max_train_queries:
        train_ids = np.sort(rng.choice(train_ids, min(max_train_queries, len(train_ids)),
                                       replace=False))
    val_ids = np.arange(len(val.poses))
    if max_val_queries:
        val_ids = np.sort(rng.choice(val_ids, min(max_val_queries, len(val_ids)), replace=False))
    root = cache_dir(data, cache)
    # the banks hold every training cell, so runs on different query subsets share one cache file
    banks, pointnet_info = load_banks(root, pointnet, {"train": train.cells, "val": val.cells},
                                      max_objects, seed, progress)
    sentences = {s for h in train_hints + val_hints for s in h}
    sentences |= set(extra_sentences(train_hints))
    text = load_text_cache(root, text_encoder, sorted(sentences))
    return RunData(train, val, train_hints, val_hints, train_ids, val_ids, banks, pointnet_info,
                   text)


def standardise_counts(model, bank) -> None:
    """Fit the object encoder's point-count standardisation to the training objects."""
    counts = bank.counts[bank.mask].float()
    model.objects.count_mean.fill_(float(counts.mean()))
    model.objects.count_std.fill_(float(counts.std()))
