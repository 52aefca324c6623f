"""The serving core's seams: map source, weights bundle and retriever, with today's behaviour."""
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

from spatialoc_ros.core.map_source import KittiPoseMap, MapSource, open_map
from spatialoc_ros.core.retriever import ExhaustiveRetriever, make_retriever
from spatialoc_ros.core.weights import WeightsBundle
from spatialoc_ros.errors import SpatialocError
from spatialoc_ros.inference import Localizer

VAL_SCENE = "2013_05_28_drive_0010_sync"
GOOD = "The pose is north of a gray building. The pose is on-top of a dark-green sidewalk."


@pytest.fixture(scope="module")
def bundle(tiny_weights):
    return WeightsBundle.load(tiny_weights, "cpu")


@dataclass
class CellsInMemory:
    """A map source that is not a folder: cells handed over by the caller."""

    path: Path
    cells: List
    name: str = "map"
    frame_id: str = "site"
    scenes: List[str] = field(default_factory=list)
    poses: List = field(default_factory=list)
    cells_by_id: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self):
        self.cells_by_id = {c.id: c for c in self.cells}
        self.scenes = sorted({c.scene for c in self.cells})


def test_a_kitti360pose_folder_is_a_map_source(tiny_dataset):
    source = open_map(tiny_dataset, ["0010"])
    assert isinstance(source, KittiPoseMap) and isinstance(source, MapSource)
    assert source.scenes == [VAL_SCENE] and source.name == "val" and source.frame_id == "map"
    assert len(source.cells) == len(source.cells_by_id) > 0 and source.poses


def test_a_folder_that_is_no_map_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for path, words in ((tmp_path / "missing", "no such map folder"),
                        (tmp_path / "empty", "not a map folder")):
        with pytest.raises(SpatialocError, match=words) as e:
            open_map(path)
        assert "\n" not in str(e.value)


def test_any_map_source_and_a_shared_bundle_serve_like_a_folder(tiny_dataset, tiny_weights,
                                                                bundle, tmp_path):
    cache = tiny_weights / "cache"
    by_folder = Localizer(tiny_dataset, bundle, scenes=[VAL_SCENE], device="cpu", cache=cache,
                          top_k=5)
    cells = open_map(tiny_dataset, [VAL_SCENE]).cells
    by_source = Localizer(CellsInMemory(tmp_path, cells), bundle, device="cpu", cache=cache,
                          top_k=5)
    assert by_source.weights is by_folder.weights is bundle  # loaded once, shared
    by_folder.calibration.scale *= 2  # what fitting a calibration does to one localizer
    assert by_source.calibration.scale == bundle.calibration.scale != by_folder.calibration.scale
    a, b = by_folder.localize(GOOD), by_source.localize(GOOD)
    assert [h.cell_id for h in a.hypotheses] == [h.cell_id for h in b.hypotheses]
    torch.testing.assert_close(torch.tensor(a.best.position), torch.tensor(b.best.position))


def test_the_bundle_checks_that_its_parts_belong_together(tiny_weights, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(tiny_weights, folder, ignore=shutil.ignore_patterns("cache"))
    data = bytearray((folder / "pointnet.safetensors").read_bytes())
    data[-4:] = bytes(b ^ 0x01 for b in data[-4:])  # other PointNet++ weights, same shapes
    (folder / "pointnet.safetensors").write_bytes(bytes(data))
    with pytest.raises(SpatialocError, match=r"not the PointNet\+\+ the coarse model was trained"):
        WeightsBundle.load(folder)
    (folder / "fine.safetensors").unlink()
    with pytest.raises(SpatialocError, match="fine.safetensors: no fine weights"):
        WeightsBundle.load(folder)
    assert WeightsBundle.load(tiny_weights, fine=False).fine is None


def test_the_exhaustive_retriever_is_the_top_k_of_every_fused_score(tiny_dataset, bundle,
                                                                    tiny_weights):
    loc = Localizer(tiny_dataset, bundle, scenes=[VAL_SCENE], device="cpu",
                    cache=tiny_weights / "cache", retriever="exhaustive")
    assert isinstance(loc.retriever, ExhaustiveRetriever) and len(loc.retriever) == loc.num_cells
    from spatialoc_ros.core.text_cache import text_batch

    loc.encode_sentences(GOOD.split(". "))
    with torch.inference_mode():
        query = loc.coarse.model.encode_text(**text_batch(loc.text, [GOOD.split(". ")]))
        every = loc.retriever.scores(query)
        scores, rows = loc.retriever.top_k(query, 4)
    assert every.shape == (1, loc.num_cells) and rows.shape == (1, 4)
    # the same values, picked from the full score row
    assert torch.equal(every[0, rows[0]], scores[0]) and scores[0, 0] == every.max()
    with pytest.raises(SpatialocError, match="unknown retriever 'faiss'"):
        make_retriever("faiss", loc.coarse.gallery, bundle.score_terms)


def test_a_localizer_with_the_two_stage_retriever_answers_as_the_exhaustive_one(
        tiny_dataset, bundle, tiny_weights):
    """A gallery smaller than the shortlist and the reference sample: the same answer."""
    kwargs = dict(scenes=[VAL_SCENE], device="cpu", cache=tiny_weights / "cache")
    exhaustive = Localizer(tiny_dataset, bundle, retriever="exhaustive", **kwargs)
    two = Localizer(tiny_dataset, bundle, retriever="two-stage",
                    retriever_options={"shortlist": 1000, "reference": 1000}, **kwargs)
    a, b = exhaustive.localize(GOOD), two.localize(GOOD)
    assert [h.cell_id for h in a.hypotheses] == [h.cell_id for h in b.hypotheses]
    np.testing.assert_allclose([h.score for h in a.hypotheses],
                               [h.score for h in b.hypotheses], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(a.best.position, b.best.position, rtol=0, atol=1e-6)


def test_auto_scores_small_maps_exhaustively(tiny_dataset, bundle, tiny_weights):
    from spatialoc_ros.core.retriever import AUTO_EXHAUSTIVE_CELLS

    loc = Localizer(tiny_dataset, bundle, scenes=[VAL_SCENE], device="cpu",
                    cache=tiny_weights / "cache")
    assert loc.num_cells <= AUTO_EXHAUSTIVE_CELLS
    assert isinstance(loc.retriever, ExhaustiveRetriever)  # the default is "auto"


def test_grow_serves_added_rows_after_the_maps_own_and_grows_again_from_scratch(
        tiny_dataset, bundle, tiny_weights, tmp_path, copy_store):
    from spatialoc_ros.core.cell_store import CellStore

    loc = Localizer(tiny_dataset, bundle, scenes=[VAL_SCENE], device="cpu",
                    cache=tiny_weights / "cache", retriever="exhaustive")
    own = loc.num_cells
    loc.grow(copy_store(loc, tmp_path / "s"), "exhaustive")
    assert loc.num_cells == 2 * own
    # the copies are a scene of their own, after the map's scenes
    assert loc.scene_index[own:].min() > loc.scene_index[:own].max()
    cand = loc.candidates([GOOD.split(". ")], 4)
    # each cell and its float16 copy score alike: both halves reach the top 4
    assert (cand.rows < own).any() and (cand.rows >= own).any()
    _, cov, _ = loc.published(loc.consensus(cand))
    assert torch.isfinite(cov).all()
    # a gallery grown by repeating the stored rows: every copy a scene of its own, served by
    # the two-stage retriever (its exact rerank over the whole shortlist: the copies score
    # like the stored rows)
    from spatialoc_ros.evaluation.scale import RepeatedRows

    loc.grow(RepeatedRows(CellStore(tmp_path / "s"), 3 * own), "two-stage",
             shortlist=4 * own, reference=4 * own)
    assert loc.num_cells == 4 * own
    copies = loc.scene_index[own:].reshape(3, own)
    assert len(set(copies[:, 0].tolist())) == 3
    grown = loc.candidates([GOOD.split(". ")], 8)
    assert torch.isfinite(grown.scores).all() and (grown.rows >= 2 * own).any()
    loc.grow(CellStore(tmp_path / "s").head(0), "exhaustive")
    assert loc.num_cells == own and len(loc.scene_index) == own
