"""``spatialoc map build``: labelled PLY/PCD clouds written here, cut into map folders.

Every cloud is a real file in ``tmp_path``, written with plyfile, pypcd4 or numpy. The scene
is hand-made and small: a road plane, a vegetation blob and eight instance objects (a
building, poles, lamps, a sign, a bin) that every cell holds. Coordinates lie at least 3 cm
from every multiple of 0.125 m (the voxel and cell borders), so a float32 round trip, a shift
by 10^7 m or summing in another order moves no point across a border; maps are then compared
with tolerances that hold in exact arithmetic.
"""
import hashlib
import json
import logging
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.spatial import cKDTree

from spatialoc_ros import cli
from spatialoc_ros.data import clouds
from spatialoc_ros.data import constants as C
from spatialoc_ros.data import map_build
from spatialoc_ros.data.map_folder import CELLS_FILE, MAP_FILE, read_map_cells, read_map_meta

VAL_SCENE = "2013_05_28_drive_0010_sync"
COORD_TOL = 1e-4  # m
FIELDS = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
          ("blue", "u1"), ("semantic", "<i4"), ("instance", "<i4")]
# KITTI-360 ids of the scene's classes, and a label file saying the same for a PCD's fields
IDS = {"road": 7, "building": 11, "pole": 17, "traffic sign": 20, "vegetation": 21,
       "lamp": 38, "trash bin": 39}
PCD_LABELS = {"fields": {"class": "label", "instance": "object", "color": "rgb"},
              "classes": {v: k for k, v in IDS.items()}}


# --------------------------------------------------------------------------- the scene


def _grid(lo, hi, step=0.25):
    """Points of a box on a 0.25 m grid: [n, 3]."""
    axes = [np.arange(a, b, step) for a, b in zip(lo, hi)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def _shell(lo, hi):
    """The walls of a box (no roof, no floor) on a 0.25 m grid."""
    p = _grid(lo, hi)
    lo, hi = np.asarray(lo), np.asarray(hi) - 0.25
    wall = (np.isclose(p[:, 0], lo[0]) | np.isclose(p[:, 0], hi[0])
            | np.isclose(p[:, 1], lo[1]) | np.isclose(p[:, 1], hi[1]))
    return p[wall]


def scene_objects():
    """(label, instance id, points on a 0.25 m grid) of the hand-made scene, in metres."""
    column = np.stack([np.zeros(40), np.zeros(40), np.arange(40) * 0.25], 1)
    objects = [("road", 7000, _grid((0, 0, 0), (30, 30, 0.25))),
               ("vegetation", 21000, _grid((22, 22, 0.5), (26, 26, 2.5))),
               ("building", 11001, _shell((11, 15, 0), (15, 19, 6)))]
    for k, (x, y) in enumerate([(11, 11), (19, 11), (19, 19)], 1):
        objects.append(("pole", 17000 + k, column + (x, y, 0)))
    for k, (x, y) in enumerate([(16, 12), (12, 13)], 1):
        objects.append(("lamp", 38000 + k, column[:30] + (x, y, 0)))
    objects.append(("traffic sign", 20001, _grid((17, 17, 2), (18, 17.5, 3.5))))
    objects.append(("trash bin", 39001, _grid((13, 11, 0), (14, 12, 1))))
    return objects


def scene_rows(seed=0, shift=0.0, dtype="<f4", extra=()):
    """The scene as PLY-style records; ``extra``: more (label id, instance, points)."""
    rng = np.random.default_rng(seed)
    parts = [(IDS[label], inst, p) for label, inst, p in scene_objects()] + list(extra)
    fields = [(n, dtype if n in "xyz" else t) for n, t in FIELDS]
    rows = np.zeros(sum(len(p) for *_, p in parts), fields)
    at = 0
    for sem, inst, p in parts:
        part = rows[at:at + len(p)]
        # 1/16 m off the grid, +-3 cm of noise: 3 cm or more from every multiple of 1/8 m
        xyz = p + 0.0625 + rng.uniform(-0.03, 0.03, p.shape)
        for i, axis in enumerate("xyz"):
            part[axis] = xyz[:, i] + shift
        colour = rng.integers(20, 230, 3)
        rgb = np.clip(colour + rng.integers(-20, 21, (len(p), 3)), 0, 255)
        part["red"], part["green"], part["blue"] = rgb.T
        part["semantic"], part["instance"] = sem, inst
        at += len(p)
    return rows


def write_ply(path, rows, binary=True):
    import plyfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plyfile.PlyData([plyfile.PlyElement.describe(rows, "vertex")], text=not binary).write(path)
    return path


def packed_rgb(rows):
    return ((rows["red"].astype(np.uint32) << 16) | (rows["green"].astype(np.uint32) << 8)
            | rows["blue"].astype(np.uint32))


def write_pcd(path, rows, encoding="binary"):
    """Fields x y z rgb label object; rgb packed into a float (as PCL does). ASCII is written
    as PCL writes it: the packed rgb as its unsigned integer, coordinates exactly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = packed_rgb(rows)
    if encoding == "ascii":
        header = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
                  "FIELDS x y z rgb label object\nSIZE 4 4 4 4 4 4\nTYPE F F F F I I\n"
                  f"COUNT 1 1 1 1 1 1\nWIDTH {len(rows)}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\n"
                  f"POINTS {len(rows)}\nDATA ascii\n")
        table = np.zeros((len(rows), 6), dtype=object)
        for i, axis in enumerate("xyz"):
            table[:, i] = rows[axis].astype(np.float64)
        table[:, 3], table[:, 4], table[:, 5] = rgb, rows["semantic"], rows["instance"]
        with open(path, "w") as f:
            f.write(header)
            np.savetxt(f, table, fmt=["%.17g"] * 3 + ["%d"] * 3)
        return path
    from pypcd4 import Encoding, PointCloud

    cloud = PointCloud.from_points(
        [rows["x"], rows["y"], rows["z"], rgb.view(np.float32), rows["semantic"],
         rows["instance"]],
        ("x", "y", "z", "rgb", "label", "object"),
        (np.float32, np.float32, np.float32, np.float32, np.int32, np.int32))
    cloud.save(path, encoding=Encoding(encoding))
    return path


def write_pcd_fields(path, rows):
    """A binary PCD with the fields of the PLY records (KITTI-360's names)."""
    from pypcd4 import Encoding, PointCloud

    cloud = PointCloud.from_points([rows[n] for n in rows.dtype.names], rows.dtype.names,
                                   [rows.dtype[n].type for n in rows.dtype.names])
    cloud.save(path, encoding=Encoding.BINARY)
    return path


def label_file(path, doc):
    path = Path(path)
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


# --------------------------------------------------------------------------- building, comparing


def build(inputs, out, **kwargs):
    kwargs.setdefault("progress", False)
    inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    return map_build.build_map([str(i) for i in inputs], out, **kwargs)


def run(capsys, *argv):
    """``main(argv)`` -> (status, stdout, stderr)."""
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def _object_key(o):
    return (o.label, o.instance_id, len(o.xyz), tuple(np.round(o.xyz.mean(0), 3)))


def assert_same_map(a, b, shift=(0.0, 0.0, 0.0), ordered=False, colours=True):
    """Maps ``a`` and ``b`` hold the same cells (``b``'s moved by ``shift``): ids, boxes,
    objects (label, instance, point count) and points within COORD_TOL metres."""
    ca, cb = read_map_cells(a, "map"), read_map_cells(b, "map")
    assert [c.id for c in ca] == [c.id for c in cb]
    assert ca, "no cells"
    shift = np.concatenate([shift, shift])
    for x, y in zip(ca, cb):
        np.testing.assert_allclose(y.bbox_w, x.bbox_w + shift, rtol=0, atol=1e-6)
        ox, oy = list(x.objects), list(y.objects)
        if not ordered:
            ox, oy = sorted(ox, key=_object_key), sorted(oy, key=_object_key)
        assert ([(o.label, o.instance_id, len(o.xyz)) for o in ox]
                == [(o.label, o.instance_id, len(o.xyz)) for o in oy]), x.id
        for p, q in zip(ox, oy):
            # cell-normalised points (float32) -> metres; the same set of points
            pm, qm = p.xyz * x.cell_size, q.xyz * y.cell_size
            d, nearest = cKDTree(pm).query(qm)
            assert d.max() <= COORD_TOL, (x.id, p.label, d.max())
            assert len(np.unique(nearest)) == len(qm)
            if colours:
                np.testing.assert_allclose(q.rgb, p.rgb[nearest], rtol=0, atol=1e-6)
    return ca


@pytest.fixture(scope="module")
def rows():
    return scene_rows()


@pytest.fixture(scope="module")
def reference(rows, tmp_path_factory):
    """The scene as one binary PLY and the map built from it."""
    root = tmp_path_factory.mktemp("reference")
    ply = write_ply(root / "scene.ply", rows)
    meta = build(ply, root / "map")
    return root / "map", ply, meta


# --------------------------------------------------------------------------- 1. formats


def test_the_reference_map_has_the_scene_in_every_cell(reference, rows):
    folder, ply, meta = reference
    cells = read_map_cells(folder, "map")
    assert len(cells) == meta["counts"]["cells"] == 9
    for cell in cells:
        labels = [o.label for o in cell.objects]
        assert {"building", "pole", "lamp", "traffic sign", "trash bin"} <= set(labels)
        assert labels.count("pole") == 3 and "road" in labels
        assert all(o.rgb.min() >= 0 and o.rgb.max() <= 1 for o in cell.objects)
    assert meta["counts"]["points"] == len(rows)
    assert meta["counts"]["objects"] == len(scene_objects())


@pytest.mark.parametrize("kind", ["ascii.ply", "binary.pcd", "ascii.pcd",
                                  "binary_compressed.pcd"])
def test_every_format_of_the_same_points_gives_the_same_map(kind, reference, rows, tmp_path):
    encoding, suffix = kind.split(".")
    if suffix == "ply":
        cloud, labels = write_ply(tmp_path / "scene.ply", rows, binary=False), "kitti360"
    else:
        cloud = write_pcd(tmp_path / "scene.pcd", rows, encoding)
        labels = str(label_file(tmp_path / "labels.yaml", PCD_LABELS))
    meta = build(cloud, tmp_path / "map", labels=labels)
    assert_same_map(reference[0], tmp_path / "map", ordered=True)
    assert meta["counts"]["points"] == len(rows)
    assert meta["labels"]["source"] == labels


# --------------------------------------------------------------------------- 2. windows, chunks


def test_windows_of_one_cloud_give_the_map_of_the_whole(reference, rows, tmp_path):
    # by x: the road, the building and the vegetation straddle the files
    by_x = [rows[(rows["x"] >= lo) & (rows["x"] < hi)] for lo, hi in ((-1, 8), (8, 13), (13, 99))]
    for k, part in enumerate(by_x):
        write_ply(tmp_path / "x" / f"{k:02d}.ply", part)
    assert sum(len(p) for p in by_x) == len(rows)
    build(tmp_path / "x", tmp_path / "map_x")
    assert_same_map(reference[0], tmp_path / "map_x")
    # interleaved, in another order, PLY and PCD mixed: every object in every file
    parts = [np.ascontiguousarray(rows[k::3]) for k in range(3)][::-1]
    files = [write_ply(tmp_path / "mixed" / "c.ply", parts[0]),
             write_pcd_fields(tmp_path / "mixed" / "b.pcd", parts[1]),
             write_ply(tmp_path / "mixed" / "a.ply", parts[2], binary=False)]
    meta = build(files, tmp_path / "map_mixed")
    assert [s["points"] for s in meta["sources"]] == [len(p) for p in parts]
    assert_same_map(reference[0], tmp_path / "map_mixed")


def test_a_file_named_twice_is_read_once(reference, tmp_path):
    folder = reference[1].parent
    meta = build([folder, reference[1]], tmp_path / "map")
    assert [s["path"] for s in meta["sources"]] == [str(reference[1])]
    assert_same_map(reference[0], tmp_path / "map", ordered=True)


def test_the_smallest_ascii_files_are_read(tmp_path):
    """A character and a separator per value: the size check lets the smallest files pass,
    without a final newline too."""
    from spatialoc_ros.data.labels import kitti360_labels

    header = ("ply\nformat ascii 1.0\nelement vertex 2\nproperty uchar x\nproperty uchar y\n"
              "property uchar z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
              "property uchar semantic\nproperty uchar instance\nend_header\n")
    (tmp_path / "small.ply").write_text(header + "1 2 3 4 5 6 7 8\n2 3 4 5 6 7 7 8")
    pcd = ("VERSION 0.7\nFIELDS x y z rgb\nSIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\n"
           "WIDTH 2\nHEIGHT 1\nPOINTS 2\nDATA ascii\n1 2 3 4\n2 3 4 5")
    (tmp_path / "small.pcd").write_text(pcd)
    for name in ("small.ply", "small.pcd"):
        cloud = clouds.CloudFile(tmp_path / name)
        assert cloud.num_points == len(cloud._data) == 2
    counts = clouds.ReadCounts()
    chunk, = clouds.CloudFile(tmp_path / "small.ply").chunks(kitti360_labels(), counts)
    np.testing.assert_array_equal(chunk.xyz, [[1, 2, 3], [2, 3, 4]])
    assert chunk.cls.tolist() == [C.CLASS_NAMES.index("road")] * 2
    # PCL writes a packed rgb float of an ASCII file as its integer
    np.testing.assert_allclose(clouds._colors(cloud._data, ("rgb",), True) * 255,
                               [[0, 0, 4], [0, 0, 5]], atol=1e-4)


def test_chunks_and_voxel_merges_do_not_change_the_map(reference, monkeypatch, tmp_path):
    monkeypatch.setattr(clouds, "CHUNK_POINTS", 997)
    monkeypatch.setattr(map_build, "_COMPACT_ROWS", 300)
    seen = []
    chunks = clouds.CloudFile.chunks

    def spy(self, *args, **kwargs):
        for chunk in chunks(self, *args, **kwargs):
            seen.append(len(chunk.xyz))
            yield chunk

    monkeypatch.setattr(clouds.CloudFile, "chunks", spy)
    build(reference[1], tmp_path / "map")
    assert len(seen) > 5 and max(seen) <= 997
    assert_same_map(reference[0], tmp_path / "map")


# --------------------------------------------------------------------------- 3. origin, metadata


def test_origin_moves_every_cell_and_is_recorded(reference, tmp_path, capsys):
    origin = (3.3, -1234.7, 0.45)
    status, out, err = run(capsys, "map", "build", reference[1], "--out", tmp_path / "map",
                           "--origin", *origin, "--frame-id", "site", "--name", "depot",
                           "--json", "--quiet")
    assert status == 0, err
    printed = json.loads(out)
    meta = read_map_meta(tmp_path / "map")
    assert printed["origin"] == meta["origin"] == list(origin)
    assert meta["frame_id"] == "site" and meta["name"] == "depot"
    cells = read_map_cells(tmp_path / "map", "depot")
    ref = read_map_cells(reference[0], "map")
    assert [c.id.split("_")[1] for c in cells] == [c.id.split("_")[1] for c in ref]
    for a, b in zip(ref, cells):
        np.testing.assert_allclose(b.bbox_w, a.bbox_w + np.tile(origin, 2), rtol=0, atol=1e-9)
        assert [(o.label, o.instance_id, len(o.xyz)) for o in a.objects] == \
            [(o.label, o.instance_id, len(o.xyz)) for o in b.objects]
        for p, q in zip(a.objects, b.objects):
            np.testing.assert_allclose(q.xyz * 30, p.xyz * 30, rtol=0, atol=COORD_TOL)
    # what the map was built from
    digest = hashlib.sha256(Path(reference[1]).read_bytes()).hexdigest()
    assert meta["sources"] == [{"path": str(reference[1]), "sha256": digest,
                                "points": meta["counts"]["points"]}]
    assert meta["labels"]["source"] == "kitti360"
    assert meta["labels"]["class_field"] == "semantic"
    assert meta["labels"]["classes"]["11"] == "building"
    assert "road" in meta["labels"]["stuff"] and "pole" not in meta["labels"]["stuff"]
    counts = meta["counts"]
    assert counts["cells"] == len(cells) and counts["non_finite_dropped"] == 0
    assert counts["objects_by_class"]["pole"] == 3 and counts["unlisted_points"] == 0
    assert meta["cells_file"]["sha256"] == hashlib.sha256(
        (tmp_path / "map" / CELLS_FILE).read_bytes()).hexdigest()


def test_a_double_cloud_far_from_zero_gives_the_same_cells_shifted(reference, tmp_path, caplog):
    shift = 1e7
    far = scene_rows(shift=shift, dtype="<f8")
    with caplog.at_level(logging.WARNING, logger="spatialoc_ros"):
        build(write_ply(tmp_path / "far.ply", far), tmp_path / "map")
    assert not [r for r in caplog.records if "float32" in r.getMessage()]
    assert_same_map(reference[0], tmp_path / "map", shift=(shift, shift, shift))


def test_a_float32_cloud_far_from_zero_warns_about_precision(tmp_path, caplog):
    far = scene_rows(shift=1e7)
    ply = write_ply(tmp_path / "far32.ply", far)
    with caplog.at_level(logging.WARNING, logger="spatialoc_ros"):
        build(ply, tmp_path / "map")
    warned = [r.getMessage() for r in caplog.records if "float32" in r.getMessage()]
    assert len(warned) == 1 and str(ply) in warned[0] and "1.00 m apart" in warned[0]


# --------------------------------------------------------------------------- 4. serving a map


@pytest.fixture(scope="module")
def synth_scene(tmp_path_factory):
    """The tiny preset's validation scene as KITTI-360 PLY windows (the scene of tiny_dataset
    and tiny_weights), its benchmark cells and its queries."""
    from spatialoc_ros.data.synth import build_scene

    root = tmp_path_factory.mktemp("synth")
    cells, _, _ = build_scene(VAL_SCENE, "tiny", 0, ply_dir=root)
    return root / VAL_SCENE, cells


def test_a_built_map_serves_in_its_own_coordinates(synth_scene, tiny_weights, tmp_path, capsys):
    from spatialoc_ros.core.map_source import BuiltMap, open_map
    from spatialoc_ros.inference import Localizer

    scene, bench_cells = synth_scene
    origin = np.array([5000.0, -3000.0, 12.5])
    reports = {}
    for shift in (np.zeros(3), origin):
        out = tmp_path / f"map_{int(shift[0])}"
        status, _, err = run(capsys, "map", "build", scene, "--out", out, "--trajectory",
                             scene / "poses.txt", "--origin", *shift, "--frame-id", "site",
                             "--quiet")
        assert status == 0, err
        source = open_map(out)
        assert isinstance(source, BuiltMap) and source.frame_id == "site"
        # the benchmark's cells along the drive: the same centres, moved by the origin
        assert [c.id.split("_")[1] for c in source.cells] == \
            [c.id.split("_")[1] for c in bench_cells]
        for built, bench in zip(source.cells, bench_cells):
            np.testing.assert_allclose(built.bbox_w, bench.bbox_w + np.tile(shift, 2),
                                       rtol=0, atol=1e-4)
        # queries in the map's coordinates: the scene's own, moved by the origin
        lines = (scene / "queries.jsonl").read_text().splitlines()[:24]
        queries = tmp_path / f"queries_{int(shift[0])}.jsonl"
        queries.write_text("".join(json.dumps({"text": d["text"], "pose_w": (
            np.array(d["pose_w"]) + shift).tolist()}) + "\n" for d in map(json.loads, lines)))
        status, out_text, err = run(capsys, "eval", "--map", out, "--queries", queries,
                                    "--weights", tiny_weights, "--json", "--quiet",
                                    "--device", "cpu", "--cache", tmp_path / "cache")
        assert status == 0, err
        reports[shift[0]] = json.loads(out_text)
    report = reports[origin[0]]
    assert {"localization_recall", "published_recall", "calibration"} <= set(report)
    assert "retrieval_recall" not in report and report["frame_id"] == "site"
    assert report["num_queries"] == 24
    # the same answers, wherever the map is put
    assert report["localization_recall"] == reports[0.0]["localization_recall"]
    assert report["top1_error_m"]["median"] == pytest.approx(
        reports[0.0]["top1_error_m"]["median"], abs=1e-3)

    text = json.loads(lines[0])["text"]
    loc0, loc = [Localizer(tmp_path / f"map_{int(x)}", tiny_weights, device="cpu",
                           cache=tmp_path / "cache") for x in (0.0, origin[0])]
    assert loc.map.frame_id == "site" and len(loc.cells) == len(bench_cells)
    here, moved = loc0.localize(text), loc.localize(text)
    assert moved.hypotheses
    for h, g in zip(here.hypotheses, moved.hypotheses):
        box = loc.map.cells_by_id[g.cell_id].bbox_w
        assert np.all(g.position[:2] >= box[:2] - 15) and np.all(g.position[:2] <= box[3:5] + 15)
        # the same answer as in the map built without the origin, moved by it
        assert g.cell_id.split("_")[1] == h.cell_id.split("_")[1]
        np.testing.assert_allclose(g.position, h.position + origin, rtol=0, atol=1e-3)
    np.testing.assert_allclose(moved.covariance_xy, here.covariance_xy, rtol=1e-4, atol=1e-4)


def test_eval_map_on_a_benchmark_folder_measures_retrieval_too(
        synth_scene, tiny_dataset, tiny_weights, tmp_path, capsys):
    scene, _ = synth_scene
    lines = (scene / "queries.jsonl").read_text().splitlines()[:16]
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(line + "\n" for line in lines))  # with their "scene"
    status, out_text, err = run(capsys, "eval", "--map", tiny_dataset, "--scenes", "0010",
                                "--queries", queries, "--weights", tiny_weights, "--json",
                                "--quiet", "--device", "cpu", "--cache", tmp_path / "cache")
    assert status == 0, err
    report = json.loads(out_text)
    # the benchmark defines each query's cell: the nearest centre of its scene
    assert set(report["retrieval_recall"]) == {"1", "3", "5"}
    assert report["num_queries"] == 16 and report["gallery_cells"] > 0
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text(json.dumps(dict(json.loads(lines[0]), scene="0003")) + "\n")
    status, _, err = run(capsys, "eval", "--map", tiny_dataset, "--scenes", "0010",
                         "--queries", foreign, "--weights", tiny_weights, "--quiet")
    assert status == 2 and "not in the map's scenes" in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------- 5. bad input


@pytest.fixture()
def maps(tmp_path):
    """An empty folder to build into: nothing may be left in it when a build fails."""
    folder = tmp_path / "maps"
    folder.mkdir()
    return folder


def assert_fails(capsys, maps, inputs, *fragments, extra=()):
    """``map build`` fails with one ``spatialoc: error:`` line holding ``fragments``, quickly
    and without a large allocation, and leaves nothing beside ``--out``."""
    inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    tracemalloc.start()
    start = time.perf_counter()
    try:
        status, out, err = run(capsys, "map", "build", *inputs, "--out", maps / "map",
                               "--quiet", *extra)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == cli.EXIT_ERROR, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("spatialoc: error: "), err
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    assert list(maps.iterdir()) == [], "a failed build left files"
    assert time.perf_counter() - start < 20
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB allocated"
    return lines[0]


def _claim(path, old, new):
    """Rewrite the header line ``old`` of a cloud file as ``new`` (the data stays)."""
    data = Path(path).read_bytes()
    assert data.count(old.encode()) == 1
    Path(path).write_bytes(data.replace(old.encode(), new.encode()))
    return path


def test_a_cloud_without_its_class_field_is_one_line(rows, tmp_path, maps, capsys):
    from numpy.lib import recfunctions

    names = [n for n in rows.dtype.names if n != "semantic"]
    ply = write_ply(tmp_path / "noclass.ply", recfunctions.repack_fields(rows[names]))
    assert_fails(capsys, maps, ply, ply, "'semantic'", "--labels")


def test_an_empty_file_is_one_line(tmp_path, maps, capsys):
    for name in ("empty.ply", "empty.pcd"):
        (tmp_path / name).write_bytes(b"")
        assert_fails(capsys, maps, tmp_path / name, tmp_path / name, "empty file")


def test_a_truncated_cloud_is_one_line(rows, tmp_path, maps, capsys):
    ply = write_ply(tmp_path / "cut.ply", rows)
    ply.write_bytes(ply.read_bytes()[:-100])
    assert_fails(capsys, maps, ply, ply, f"header claims {len(rows):,} points")
    text = write_ply(tmp_path / "cut_ascii.ply", rows, binary=False)
    text.write_bytes(b"\n".join(text.read_bytes().split(b"\n")[:-50]) + b"\n")
    assert_fails(capsys, maps, text, text, "unreadable PLY")
    for encoding in ("binary", "ascii", "binary_compressed"):
        pcd = write_pcd(tmp_path / f"cut_{encoding}.pcd", rows, encoding)
        pcd.write_bytes(pcd.read_bytes()[:-100])
        assert_fails(capsys, maps, pcd, pcd, extra=("--labels", label_file(
            tmp_path / "labels.yaml", PCD_LABELS)))


@pytest.mark.parametrize("kind", ["binary.ply", "ascii.ply", "binary.pcd", "ascii.pcd",
                                  "binary_compressed.pcd"])
def test_a_header_claiming_far_more_points_fails_fast(kind, rows, tmp_path, maps, capsys):
    encoding, suffix = kind.split(".")
    claim = 10 ** 12
    small = np.ascontiguousarray(rows[:500])
    if suffix == "ply":
        path = write_ply(tmp_path / kind, small, binary=encoding == "binary")
        _claim(path, "element vertex 500\n", f"element vertex {claim}\n")
        extra = ()
    else:
        path = write_pcd(tmp_path / kind, small, encoding)
        _claim(path, "POINTS 500\n", f"POINTS {claim}\n")
        _claim(path, "WIDTH 500\n", f"WIDTH {claim}\n")
        extra = ("--labels", label_file(tmp_path / "labels.yaml", PCD_LABELS))
    assert_fails(capsys, maps, path, path, f"header claims {claim:,} points", extra=extra)


def test_a_cloud_without_instance_objects_is_one_line(rows, tmp_path, maps, capsys):
    stuff = rows[np.isin(rows["semantic"], [IDS["road"], IDS["vegetation"]])]
    ply = write_ply(tmp_path / "stuff.ply", np.ascontiguousarray(stuff))
    assert_fails(capsys, maps, ply, ply, "no instance objects")


def test_bad_label_files_are_one_line(reference, tmp_path, maps, capsys):
    unknown = label_file(tmp_path / "unknown.yaml", {"classes": {7: "road", 11: "skyscraper"}})
    assert_fails(capsys, maps, reference[1], unknown, "unknown class 'skyscraper'",
                 extra=("--labels", unknown))
    broken = label_file(tmp_path / "broken.yaml", "classes: {7: road\n  11: [building\n")
    assert_fails(capsys, maps, reference[1], broken, "not YAML", extra=("--labels", broken))
    assert_fails(capsys, maps, reference[1], tmp_path / "missing.yaml",
                 extra=("--labels", tmp_path / "missing.yaml"))
    # a binary file (a cloud given as --labels by mistake)
    assert_fails(capsys, maps, reference[1], reference[1], "not YAML",
                 extra=("--labels", reference[1]))


def test_missing_inputs_are_one_line(tmp_path, maps, capsys):
    assert_fails(capsys, maps, tmp_path / "nowhere.ply", tmp_path / "nowhere.ply",
                 "no such file")
    (tmp_path / "clouds").mkdir()
    (tmp_path / "clouds" / "readme.txt").write_text("no clouds here")
    assert_fails(capsys, maps, tmp_path / "clouds", tmp_path / "clouds", "no .ply or .pcd")


def test_an_existing_out_folder_needs_force(reference, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    status, _, err = run(capsys, "map", "build", reference[1], "--out", out, "--quiet")
    assert status == cli.EXIT_ERROR and len(err.splitlines()) == 1
    assert str(out) in err and "--force" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    # an empty folder is fine, and --force replaces a map
    (out / "notes.txt").unlink()
    assert run(capsys, "map", "build", reference[1], "--out", out, "--quiet")[0] == 0
    assert run(capsys, "map", "build", reference[1], "--out", out, "--quiet")[0] == 2
    assert run(capsys, "map", "build", reference[1], "--out", out, "--quiet", "--force")[0] == 0
    assert sorted(p.name for p in out.iterdir()) == [CELLS_FILE, MAP_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    # --force never replaces a folder that is not a map, nor a file
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("keep me")
    (tmp_path / "notes.txt").write_text("keep me")
    for other in (tmp_path / "data", tmp_path / "notes.txt"):
        status, _, err = run(capsys, "map", "build", reference[1], "--out", other, "--quiet",
                             "--force")
        assert status == cli.EXIT_ERROR and "not a map folder" in err and str(other) in err
    assert (tmp_path / "data" / "keep.txt").read_text() == "keep me"
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_a_build_that_fails_while_writing_leaves_the_old_map(reference, maps, monkeypatch):
    from spatialoc_ros.data import map_folder

    build(reference[1], maps / "map")
    before = {p.name: p.read_bytes() for p in (maps / "map").iterdir()}

    def disk_full(folder, cells, meta):
        (Path(folder) / CELLS_FILE).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(map_folder, "write_map_folder", disk_full)
    with pytest.raises(OSError, match="No space"):
        build(reference[1], maps / "map", force=True)
    assert [p.name for p in maps.iterdir()] == ["map"]
    assert {p.name: p.read_bytes() for p in (maps / "map").iterdir()} == before


# --------------------------------------------------------------------------- warnings


def test_unknown_label_ids_are_one_warning_with_their_count(tmp_path, capsys):
    noise = [(99, 99000, _grid((20, 5, 0), (22, 7, 1))),
             (98, 98000, _grid((5, 5, 1), (5.5, 5.5, 1.5)))]
    rows = scene_rows(extra=noise)
    ply = write_ply(tmp_path / "noisy.ply", rows)
    status, _, err = run(capsys, "map", "build", ply, "--out", tmp_path / "map", "--quiet")
    assert status == 0, err
    lines = err.splitlines()
    assert len(lines) == 1 and "not in the label mapping" in lines[0], err
    assert "98 (8 points)" in lines[0] and "99 (256 points)" in lines[0]
    counts = read_map_meta(tmp_path / "map")["counts"]
    assert counts["unlisted_points"] == 264 and counts["points"] == len(rows)


def test_points_that_are_not_finite_are_dropped_and_counted(rows, tmp_path, capsys):
    bad = rows.copy()
    bad["x"][5], bad["y"][17], bad["z"][1000], bad["x"][1000] = np.nan, np.inf, -np.inf, np.nan
    ply = write_ply(tmp_path / "nan.ply", bad)
    status, _, err = run(capsys, "map", "build", ply, "--out", tmp_path / "map", "--quiet")
    assert status == 0, err
    lines = err.splitlines()
    assert len(lines) == 1 and "dropped 3 points with NaN or infinite coordinates" in lines[0]
    counts = read_map_meta(tmp_path / "map")["counts"]
    assert counts["non_finite_dropped"] == 3 and counts["points"] == len(rows)
    assert counts["cells"] == 9


def test_ground_centres_cover_the_standing_ground_and_reach_beside_it():
    from spatialoc_ros.data import constants as C
    from spatialoc_ros.data.cells import ground_cell_centers

    # a 40 m x 4 m strip of road along x at height 2 m (the points avoid square borders)
    xs, ys = np.meshgrid(np.arange(0.5, 40.0, 1.0), np.arange(1.25, 4.0, 1.0))
    road = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, 2.0)], axis=1)
    on = ground_cell_centers(road)
    assert sorted(map(tuple, on[:, :2])) == [(5.0, 5.0), (15.0, 5.0), (25.0, 5.0), (35.0, 5.0)]
    # the drive's pose height above the ground, where the benchmark's centres are
    np.testing.assert_allclose(on[:, 2], 2.0 + C.POSE_HEIGHT, rtol=0, atol=1e-12)
    beside = ground_cell_centers(road, reach=20.0)
    squares = {tuple(np.round((c[:2] - 5.0) / 10.0).astype(int)) for c in beside}
    # every square within 20 m (centre to centre) of a road square, and no other
    expected = {(i + di, dj) for i in range(4) for di in range(-2, 3) for dj in range(-2, 3)
                if di * di + dj * dj <= 4}
    assert squares == expected
    np.testing.assert_allclose(beside[:, 2], 2.0 + C.POSE_HEIGHT, rtol=0, atol=1e-12)
