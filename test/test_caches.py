"""Caches follow what they were computed from; a damaged cache file is rebuilt, never trusted."""
import logging
import shutil

import numpy as np
import pytest
import torch

from spatialoc_ros.core.frozen_inputs import load_text_cache
from spatialoc_ros.data.kitti360pose import cells_path, load_scene, write_scene
from spatialoc_ros.inference import Localizer
from spatialoc_ros.networks.checkpoint import load_config

VAL_SCENE = "2013_05_28_drive_0010_sync"
GOOD = "The pose is north of a gray building. The pose is on-top of a dark-green sidewalk."
SENTENCES = ["The pose is north of a gray building.", "The pose is east of a green pole."]


def copy_scene(src, dst, scene):
    for sub, suffix in (("cells", ".pkl"), ("poses", ".pkl"), ("direction", ".json")):
        (dst / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(src / sub / f"{scene}{suffix}", dst / sub / f"{scene}{suffix}")
    return dst


def rewrite_objects(root, scene):
    """The same cell ids, each cell holding the next cell's objects."""
    data = load_scene(root, scene)
    cells = list(data.cells)
    objects = [c.objects for c in cells]
    for i, cell in enumerate(cells):
        cell.objects = objects[(i + 1) % len(cells)]
    write_scene(root, scene, cells, list(data.poses))


def same_answer(a, b):
    assert [h.cell_id for h in a.hypotheses] == [h.cell_id for h in b.hypotheses]
    # the same computation on the same inputs; 1e-6 m is far below any meaningful position change
    np.testing.assert_allclose(a.best.position, b.best.position, atol=1e-6)


def localizer(root, weights, cache, scenes=None):
    return Localizer(root, weights, scenes=scenes, device="cpu", cache=cache, top_k=5)


def test_a_changed_map_under_the_same_ids_is_encoded_again(tiny_dataset, tiny_weights, tmp_path,
                                                           caplog):
    root = copy_scene(tiny_dataset, tmp_path / "map", VAL_SCENE)
    cache = tmp_path / "cache"
    before = localizer(root, tiny_weights, cache)
    ids = [c.id for c in before.cells]
    rewrite_objects(root, VAL_SCENE)
    with caplog.at_level(logging.INFO, logger="spatialoc_ros"):
        after = localizer(root, tiny_weights, cache)
    assert [c.id for c in after.cells] == ids
    said = caplog.text
    assert "computing the PointNet++ features" in said and "encoding the gallery" in said
    fresh = localizer(root, tiny_weights, tmp_path / "fresh")
    old, new = before.coarse.gallery.descriptors, fresh.coarse.gallery.descriptors
    assert not torch.allclose(old.p_glo, new.p_glo)  # a stale cache would answer from these
    torch.testing.assert_close(after.coarse.gallery.descriptors.p_glo, new.p_glo)
    same_answer(after.localize(GOOD), fresh.localize(GOOD))


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_tail(path):
    """Damage that still parses: the last bytes of the tensor data inverted."""
    data = bytearray(path.read_bytes())
    data[-16:] = bytes(b ^ 0xFF for b in data[-16:])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [truncate, flip_tail], ids=["truncated", "flipped"])
@pytest.mark.parametrize("prefix", ["cellbank", "gallery"])
def test_a_damaged_feature_cache_is_rebuilt_with_one_warning(tiny_dataset, tiny_weights, tmp_path,
                                                             caplog, prefix, damage):
    cache = tmp_path / "cache"
    want = localizer(tiny_dataset, tiny_weights, cache, [VAL_SCENE]).localize(GOOD)
    (path,) = cache.glob(f"{prefix}*.safetensors")
    damage(path)
    with caplog.at_level(logging.WARNING, logger="spatialoc_ros"):
        again = localizer(tiny_dataset, tiny_weights, cache, [VAL_SCENE])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and path.name in warnings[0] and "\n" not in warnings[0]
    same_answer(again.localize(GOOD), want)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spatialoc_ros"):
        # rewritten whole: read back silently
        localizer(tiny_dataset, tiny_weights, cache, [VAL_SCENE])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_every_cache_file_is_named_by_its_content(tiny_dataset, tiny_weights, tmp_path):
    root = copy_scene(tiny_dataset, tmp_path / "map", VAL_SCENE)
    cache = tmp_path / "cache"
    localizer(root, tiny_weights, cache)
    before = sorted(p.name for p in cache.glob("*.safetensors"))
    rewrite_objects(root, VAL_SCENE)
    localizer(root, tiny_weights, cache)
    after = sorted(p.name for p in cache.glob("*.safetensors"))
    assert len(before) == 2 and len(after) == 4 and set(before) < set(after)
    assert cells_path(root, VAL_SCENE).is_file()


@pytest.fixture(scope="module")
def encoder(tiny_weights):
    from spatialoc_ros.networks.text_encoder import FrozenTextEncoder

    return FrozenTextEncoder(load_config(tiny_weights / "coarse")["text_encoder"])


def damage_index(folder):
    truncate(folder / "text_cache.json")


def damage_tokens(folder):
    truncate(folder / "text_cache.safetensors")


def flip_tokens(folder):
    flip_tail(folder / "text_cache.safetensors")


@pytest.mark.parametrize("damage", [damage_index, damage_tokens, flip_tokens])
def test_a_damaged_token_cache_is_rebuilt_with_one_warning(encoder, tmp_path, caplog, damage):
    first = load_text_cache(tmp_path, encoder, SENTENCES)
    want, want_mask = first.get(SENTENCES)
    damage(first.folder)
    with caplog.at_level(logging.WARNING, logger="spatialoc_ros"):
        again = load_text_cache(tmp_path, encoder, SENTENCES)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    got, got_mask = again.get(SENTENCES)
    assert torch.equal(got_mask, want_mask)
    torch.testing.assert_close(got, want)  # the encoder run again on the same sentences
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spatialoc_ros"):
        third = load_text_cache(tmp_path, encoder, SENTENCES)
    assert not caplog.records and len(third) == len(SENTENCES)
