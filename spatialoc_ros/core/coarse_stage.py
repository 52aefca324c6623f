"""The coarse stage ready to serve a map: model, cell bank and encoded gallery, from the caches."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence


@dataclass
class CoarseStage:
    model: object  # CoarseModel, eval mode
    bank: object  # CellBank of the gallery; None when loaded without it (``encoded=False``)
    text: object  # TextCache of the named queries' sentences, or None
    score_terms: List[str]
    config: dict
    # Gallery: the coarse descriptors of every bank cell (cached on disk); None as ``bank``
    gallery: object


def load_coarse_stage(weights, data: str, split: str, cells: Sequence,
                      hint_lists: Optional[Sequence[Sequence[str]]],
                      cache: Optional[str] = None, device="cpu",
                      progress: bool = True, encoded: bool = True) -> CoarseStage:
    """The coarse model of ``weights``, the bank and encoded gallery of ``cells``, and a text
    cache.

    ``weights`` is a folder or a loaded :class:`~.weights.WeightsBundle`. The cell bank
    and the gallery descriptors are cached under ``cache`` (default
    ``DATA/.spatialoc_cache``) and reused while the cells' content and the weights stay
    the same. ``encoded=False`` loads neither (a map served from its memory-mapped store,
    :mod:`.map_store`).
    """
    from .frozen_inputs import cache_dir, load_bank, load_text_cache
    from .gallery import load_or_encode_gallery
    from .weights import WeightsBundle

    bundle = (weights if isinstance(weights, WeightsBundle)
              else WeightsBundle.load(weights, device, fine=False))
    root = cache_dir(data, cache)
    bank = gallery = None
    if encoded:
        bank = load_bank(root, split, cells, bundle.pointnet, bundle.pointnet_info,
                         bundle.max_objects, bundle.seed, progress)
    text = None  # no queries named: the caller keeps its own text cache
    if hint_lists is not None:
        text = load_text_cache(root, bundle.text_encoder(),
                               sorted({s for h in hint_lists for s in h}))
    if encoded:
        gallery = load_or_encode_gallery(bundle.coarse, bank, root, bundle.coarse_weights,
                                         bank.key, device=bundle.device, progress=progress)
    return CoarseStage(bundle.coarse, bank, text, bundle.score_terms, bundle.coarse_config,
                       gallery)
