"""Load the shipped (or any trained) coarse stage with its frozen inputs for a map."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from ..errors import SpatialocError


@dataclass
class CoarseStage:
    model: object  # CoarseModel, eval mode
    bank: object  # CellBank of the gallery
    text: object  # TextCache of the named queries' sentences, or None
    score_terms: List[str]
    config: dict
    gallery: object  # Gallery: the coarse descriptors of every bank cell (cached on disk)


def load_coarse_stage(weights: str, data: str, split: str, cells: Sequence,
                      hint_lists: Optional[Sequence[Sequence[str]]],
                      cache: Optional[str] = None, device="cpu", progress: bool = True) -> CoarseStage:
    """The coarse model of ``weights/coarse``, the bank and encoded gallery of ``cells``, and a text cache.

    The cell bank and the gallery descriptors are cached under ``cache`` (default
    ``DATA/.spatialoc_cache``) and reused while the map and the weights stay the same.
    """
    from ..gallery import load_or_encode_gallery
    from ..networks.checkpoint import load_checkpoint
    from ..networks.coarse import CoarseConfig, CoarseModel
    from ..training.frozen_inputs import bank_key, cache_dir, load_banks, load_text_cache

    stem = Path(weights) / "coarse"
    if not Path(f"{stem}.safetensors").exists():
        raise SpatialocError(f"{stem}.safetensors: no coarse weights (train them with `spatialoc train coarse`)")
    model, config = load_checkpoint(lambda cfg: CoarseModel(CoarseConfig.from_dict(cfg["architecture"])), stem)
    model.to(device).eval()
    root = cache_dir(data, cache)
    seed = config.get("training", {}).get("seed", 0)
    banks, pointnet = load_banks(root, str(Path(weights) / "pointnet"), {split: cells},
                                 model.cfg.max_objects, seed, progress)
    trained_with = config.get("pointnet", {}).get("digest")
    if trained_with and trained_with != pointnet["digest"]:
        raise SpatialocError(f"{weights}/pointnet.safetensors is not the PointNet++ the coarse model was "
                             f"trained with (digest {pointnet['digest']}, expected {trained_with})")
    text = None  # no queries named: the caller keeps its own text cache
    if hint_lists is not None:
        text = load_text_cache(root, config["text_encoder"], sorted({s for h in hint_lists for s in h}))
    key = bank_key(split, pointnet["digest"], model.cfg.max_objects, seed, cells)
    gallery = load_or_encode_gallery(model, banks[split], root, f"{stem}.safetensors", key, device=device,
                                     progress=progress)
    return CoarseStage(model, banks[split], text, list(config["score_terms"]), config, gallery)
