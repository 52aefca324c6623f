"""A built map's cells read from the memory-mapped file when asked for (``MapCells``)."""
import numpy as np
import pytest

SCENE = "2013_05_28_drive_0010_sync"
FLOAT32_EPS = 1e-6  # the file stores cell-normalised points as float32 (|p| <~ 2)


@pytest.fixture(scope="module")
def written(tiny_dataset, tmp_path_factory):
    """(built map folder, the cells it was written from): one scene of the tiny benchmark."""
    from spatialoc_ros.core.map_source import open_map
    from spatialoc_ros.data.map_folder import write_map_folder

    cells = open_map(tiny_dataset, [SCENE]).cells
    folder = tmp_path_factory.mktemp("built")
    write_map_folder(folder, cells, {"name": "site", "frame_id": "map"})
    return folder, cells


def test_each_cell_reads_back_as_written(written):
    from spatialoc_ros.core.map_source import BuiltMap, cell_columns, cell_ids

    folder, cells = written
    lazy = BuiltMap(folder).cells
    assert len(lazy) == len(cells) and cell_ids(lazy) == [c.id for c in lazy]
    sizes, origins, scenes = cell_columns(lazy)
    for i in (0, len(cells) // 2, len(cells) - 1, -1):
        got, want = lazy[i], cells[i]
        assert got.id == f"site_{int(want.id.rsplit('_', 1)[1]):05d}" and got.scene == "site"
        np.testing.assert_array_equal(got.bbox_w, want.bbox_w)
        assert got.cell_size == sizes[i] == pytest.approx(want.cell_size)
        np.testing.assert_array_equal(origins[i], want.bbox_w[:2])
        assert [(o.label, o.instance_id) for o in got.objects] == \
            [(o.label, o.instance_id) for o in want.objects]
        for a, b in zip(got.objects, want.objects):
            np.testing.assert_allclose(a.xyz, b.xyz, rtol=0, atol=FLOAT32_EPS)
            np.testing.assert_allclose(a.rgb, b.rgb, rtol=0, atol=FLOAT32_EPS)
    assert set(scenes) == {"site"}
    assert [c.id for c in lazy[:3]] == cell_ids(lazy)[:3]
    with pytest.raises(IndexError):
        lazy[len(cells)]


def test_the_cache_key_comes_from_the_recorded_digest_not_the_points(written, monkeypatch):
    import json

    from spatialoc_ros.core.map_source import BuiltMap
    from spatialoc_ros.data.map_folder import MapCells
    from spatialoc_ros.digest import cells_digest

    folder, _ = written

    def no_read(self, i):
        raise AssertionError("a cell was read to key the caches")

    monkeypatch.setattr(MapCells, "_read", no_read)
    key = cells_digest(BuiltMap(folder).cells)
    assert key == cells_digest(BuiltMap(folder).cells)
    meta = json.loads((folder / "map.json").read_text())
    other = MapCells(folder, "site", meta["cells_file"]["sha256"][::-1])
    assert cells_digest(other) != key  # another file's digest: another bank
    assert cells_digest(MapCells(folder, "elsewhere", meta["cells_file"]["sha256"])) != key


@pytest.mark.timeout(300)
@pytest.mark.parametrize("rows", ["memory", "store"])
def test_a_warm_start_reads_no_cell_and_a_query_only_its_top_cells(
        rows, written, tiny_weights, tiny_dataset, tmp_path, monkeypatch):
    from spatialoc_ros.core.map_source import open_map
    from spatialoc_ros.data.map_folder import MapCells
    from spatialoc_ros.inference import Localizer

    folder, _ = written
    first = Localizer(folder, tiny_weights, device="cpu", cache=tmp_path / "cache",
                      cell_rows=rows)  # builds its caches
    reads = []
    original = MapCells._read

    def counting(self, i):
        reads.append(i)
        return original(self, i)

    monkeypatch.setattr(MapCells, "_read", counting)
    loc = Localizer(folder, tiny_weights, device="cpu", cache=tmp_path / "cache", cell_rows=rows)
    assert reads == [] and loc.num_cells == first.num_cells
    text = open_map(tiny_dataset, [SCENE]).poses[0].text
    result = loc.localize(text)
    assert result.hypotheses and len(set(reads)) <= loc.top_k
    assert {h.cell_id for h in result.hypotheses} >= {loc.cells[i].id for i in set(reads)}
    # the same answers as the localizer that read every cell to build its caches
    again = first.localize(text)
    assert [h.cell_id for h in again.hypotheses] == [h.cell_id for h in result.hypotheses]
    np.testing.assert_allclose(result.covariance_xy, again.covariance_xy, rtol=1e-9, atol=1e-9)


def test_points_drawn_from_the_file_are_the_maps_points(written):
    from spatialoc_ros.core.map_source import BuiltMap

    folder, _ = written
    cells = BuiltMap(folder).cells
    every = np.concatenate([c.to_world(o.xyz) for c in cells for o in c.objects])
    labels = np.concatenate([[o.label] * len(o.xyz) for c in cells for o in c.objects])
    xyz, names = cells.sample_points(500, seed=3)
    assert xyz.shape == (500, 3) and len(names) == 500
    again, _ = cells.sample_points(500, seed=3)
    np.testing.assert_array_equal(xyz, again)
    # each drawn point is one of the map's (same world position, same class)
    for p, name in zip(xyz[::25], names[::25]):
        d = np.linalg.norm(every - p, axis=1)
        assert d.min() < 1e-4 and name in set(labels[d < 1e-4])
    whole, _ = cells.sample_points(10 ** 9)
    assert len(whole) == len(every)


def test_a_cells_file_whose_offsets_disagree_is_one_error(written, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    from spatialoc_ros.data.map_folder import CELLS_FILE, MapCells
    from spatialoc_ros.errors import DataError

    folder, _ = written
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    arrays = load_file(str(folder / CELLS_FILE))
    arrays["object_points"] = arrays["object_points"].copy()
    arrays["object_points"][-1] += 5  # claims points the file does not hold
    save_file(arrays, str(bad / CELLS_FILE))
    with pytest.raises(DataError, match="offsets do not match"):
        MapCells(bad, "site")
    (bad / CELLS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="unreadable"):
        MapCells(bad, "site")
