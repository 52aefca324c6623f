"""KITTI360Pose folder I/O: real-format fixtures, round trip, original loaders, hostile files.

The fixtures under ``test/fixtures/`` were written by ``fixtures/make_fixtures.py``
with the original class layout and plain ``pickle.dump`` (one with numpy 1.x under
the legacy module path, one with numpy 2 under the current path), not by our writer.
"""
import importlib.util
import io
import json
import os
import pickle
import pickletools
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from spatialoc_ros.data import kitti360pose as k360
from spatialoc_ros.data import legacy
from spatialoc_ros.data.constants import CLASS_NAMES, MIN_CELLS_PER_SPLIT
from spatialoc_ros.data.schema import Cell, Hint, Object3d, Pose
from spatialoc_ros.errors import DataError

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
REPO = HERE.parent


def _load_make_fixtures():
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_fixtures = _load_make_fixtures()

FIXTURE_CASES = {
    # folder: (scene, module path recorded in the file, numpy module recorded in the file)
    "legacy_np1": ("2013_05_28_drive_0009_sync", "datapreparation.kitti360.imports",
                   "numpy.core"),
    "current_np2": ("2013_05_28_drive_0010_sync", "datapreparation.kitti360pose.imports",
                    "numpy._core"),
}


# --- helpers -------------------------------------------------------------------------------


def pickle_globals(data: bytes) -> set:
    """Every global (``module.name``) a pickle names, read from its opcodes without loading it."""
    pickletools.dis(data, out=io.StringIO())  # must be a well-formed pickle
    found, pushed, memo = set(), [], {}
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST"):
            found.add(arg.replace(" ", "."))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            pushed.append(arg)
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo.get(int(arg)))
        elif op.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = pushed[-1] if pushed else None
        elif op.name == "STACK_GLOBAL":
            module, name = pushed[-2], pushed[-1]
            assert isinstance(module, str) and isinstance(name, str)
            found.add(f"{module}.{name}")
        elif op.name.startswith("EXT"):
            found.add(f"<extension {arg}>")
        if op.name not in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "BINGET",
                           "LONG_BINGET", "GET", "MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT",
                           "FRAME", "PROTO"):
            pushed.append(None)  # something that is not a string went onto the stack
    return found


def install_original_module(monkeypatch, package="kitti360pose"):
    """Make the original record classes importable as ``datapreparation.<package>.imports``
    for this test only (monkeypatch removes them again)."""
    names = ["datapreparation", f"datapreparation.{package}", f"datapreparation.{package}.imports"]
    modules = [types.ModuleType(n) for n in names]
    exec(make_fixtures.IMPORTS_SOURCE, modules[2].__dict__)
    for name, module in zip(names, modules):
        monkeypatch.setitem(sys.modules, name, module)
    setattr(modules[0], package, modules[1])
    modules[1].imports = modules[2]
    return modules[2]


def synthetic_scene(short, n_cells, seed=0, first_idx=0, x0=0.0):
    """Cells on a 10 m grid (4 per row) with random objects.

    And poses with matched and unmatched hints.
    """
    rng = np.random.default_rng(seed)
    cells = []
    for i in range(n_cells):
        bmin = np.array([x0 + 10.0 * (i % 4), 500.0 + 10.0 * (i // 4), 3.25])
        objects = []
        for k in range(6 + i % 2):
            n = int(rng.integers(1, 6))
            objects.append(
                Object3d(
                    id=k,
                    instance_id=int(rng.integers(0, 50000)),
                    label=CLASS_NAMES[(k + i) % len(CLASS_NAMES)],
                    xyz=rng.normal(0.5, 0.4, (n, 3)),
                    rgb=rng.random((n, 3)).astype(np.float32),
                )
            )
        cells.append(Cell(f"{short}_{first_idx + i:05d}", short,
                          np.concatenate([bmin, bmin + 30.0]), 30.0, objects))
    # ids outside int32 (and the padding id) must survive as well
    cells[0].objects[0].instance_id = 2**40 + 3
    cells[0].objects[1].instance_id = -1
    poses = []
    for p, cell in enumerate(cells[:3]):
        hints = []
        for h in range(6):
            matched = h % 2 == 0
            hints.append(
                Hint(
                    object_instance_id=cell.objects[h].instance_id,
                    object_label=cell.objects[h].label,
                    object_color_rgb=rng.random(3).astype(np.float32),
                    object_color_text="gray",
                    direction=["north", "south", "east", "west", "on-top", "north"][h],
                    offset_center=rng.normal(size=2),
                    offset_closest=rng.normal(size=2),
                    closest_point=rng.random(2),
                    is_matched=matched,
                    object_id=h if matched else None,
                    best_offset_center=rng.normal(size=2) if matched else None,
                    best_offset_closest=rng.normal(size=2) if matched else None,
                )
            )
        pose = rng.random(3)
        poses.append(Pose(pose, cell.to_world(pose), cell.id, short, hints,
                          ["closest", "class", "direction"][p]))
    return cells, poses


def assert_array(actual, expected, dtype):
    assert isinstance(actual, np.ndarray) and actual.dtype == dtype, (
        type(actual), getattr(actual, "dtype", None))
    np.testing.assert_array_equal(actual, np.asarray(expected, dtype=dtype))


def assert_cells_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert (a.id, a.scene, a.cell_size) == (e.id, e.scene, e.cell_size)
        assert type(a.cell_size) is float and type(a.id) is str
        assert_array(a.bbox_w, e.bbox_w, np.float64)
        assert len(a.objects) == len(e.objects)
        for ao, eo in zip(a.objects, e.objects):
            assert (ao.id, ao.instance_id, ao.label) == (eo.id, eo.instance_id, eo.label)
            assert type(ao.id) is int and type(ao.instance_id) is int
            assert_array(ao.xyz, eo.xyz, np.float64)
            assert_array(ao.rgb, eo.rgb, np.float32)


def assert_poses_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert (a.cell_id, a.scene, a.described_by) == (e.cell_id, e.scene, e.described_by)
        assert_array(a.pose, e.pose, np.float64)
        assert_array(a.pose_w, e.pose_w, np.float64)
        assert len(a.hints) == len(e.hints)
        for ah, eh in zip(a.hints, e.hints):
            assert (ah.object_instance_id, ah.object_label, ah.object_color_text, ah.direction,
                    ah.is_matched) == (eh.object_instance_id, eh.object_label,
                                       eh.object_color_text, eh.direction, eh.is_matched)
            assert type(ah.object_instance_id) is int and type(ah.is_matched) is bool
            assert_array(ah.object_color_rgb, eh.object_color_rgb, np.float32)
            for name in ("offset_center", "offset_closest", "closest_point"):
                assert_array(getattr(ah, name), getattr(eh, name), np.float64)
            assert ah.object_id == eh.object_id
            if eh.is_matched:
                assert type(ah.object_id) is int
                assert_array(ah.best_offset_center, eh.best_offset_center, np.float64)
                assert_array(ah.best_offset_closest, eh.best_offset_closest, np.float64)
            else:
                assert ah.best_offset_center is None and ah.best_offset_closest is None


def assert_one_line_error(excinfo, *parts):
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message, message
    for part in parts:
        assert str(part) in message, (part, message)
    return message


# --- the real-format fixtures --------------------------------------------------------------


@pytest.mark.parametrize("folder", sorted(FIXTURE_CASES))
def test_fixture_loads_with_the_values_it_was_written_with(folder):
    scene, _, _ = FIXTURE_CASES[folder]
    values = make_fixtures.scene_values(scene)
    data = k360.load_scene(FIXTURES / folder, scene)
    assert data.scene == scene and k360.available_scenes(FIXTURES / folder) == [scene]

    assert len(data.cells) == len(values["cells"]) == 2
    for cell, want in zip(data.cells, values["cells"]):
        assert (cell.id, cell.scene, cell.cell_size) == (want["id"], want["scene_name"], 30.0)
        assert_array(cell.bbox_w, want["bbox_w"], np.float64)
        assert len(cell.objects) == len(want["objects"]) >= 6
        for obj, wo in zip(cell.objects, want["objects"]):
            assert (obj.id, obj.instance_id, obj.label) == (wo["id"], wo["instance_id"],
                                                            wo["label"])
            assert type(obj.instance_id) is int
            assert_array(obj.xyz, wo["xyz"], np.float64)
            assert_array(obj.rgb, wo["rgb"], np.float32)

    assert len(data.poses) == 2
    for pose, want in zip(data.poses, values["poses"]):
        assert (pose.cell_id, pose.scene, pose.described_by) == (
            want["cell_id"], want["scene_name"], want["described_by"])
        assert_array(pose.pose, want["pose"], np.float64)
        assert_array(pose.pose_w, want["pose_w"], np.float64)
        assert len(pose.hints) == 6
        for hint, wh in zip(pose.hints, want["hints"]):
            assert (hint.object_instance_id, hint.object_label, hint.object_color_text,
                    hint.direction) == (wh["instance_id"], wh["label"], wh["color_text"],
                                        wh["direction"])
            assert hint.is_matched is wh["is_matched"]
            assert_array(hint.object_color_rgb, wh["color_rgb"], np.float32)
            assert_array(hint.offset_center, wh["offset_center"], np.float64)
            assert_array(hint.offset_closest, wh["offset_closest"], np.float64)
            if wh["is_matched"]:
                assert hint.object_id == wh["object_id"]
                assert_array(hint.closest_point, wh["best_closest_point"], np.float64)
                assert_array(hint.best_offset_center, wh["best_offset_center"], np.float64)
                assert_array(hint.best_offset_closest, wh["best_offset_closest"], np.float64)
            else:
                assert (hint.object_id is None and hint.best_offset_center is None
                        and hint.best_offset_closest is None)
                assert_array(hint.closest_point, wh["closest_point"], np.float64)
    # both matched and unmatched hints are covered
    assert {h.is_matched for p in data.poses for h in p.hints} == {True, False}


def test_fixture_literals():
    """A few values spelled out, independent of the generator's formulas."""
    data = k360.load_scene(FIXTURES / "legacy_np1", "2013_05_28_drive_0009_sync")
    cell = data.cells[1]
    assert cell.id == "0009_00004" and cell.scene == "0009"
    assert cell.bbox_w.tolist() == [110.0, 200.0, 5.0, 140.0, 230.0, 35.0]
    assert [o.label for o in cell.objects] == ["building", "traffic sign", "road", "fence",
                                               "vegetation", "parking"]
    assert cell.objects[2].instance_id == 2014 and cell.objects[2].xyz.shape == (5, 3)
    assert cell.objects[2].xyz[0].tolist() == [0.2, 0.47, 0.252]
    assert data.poses[0].text.startswith("The pose is north of a gray building. "
                                         "The pose is east of a dark-green pole.")
    assert [h.is_matched for h in data.poses[1].hints] == [True, False, True, False, True, False]


@pytest.mark.parametrize("folder", sorted(FIXTURE_CASES))
def test_fixtures_record_the_expected_module_paths(folder):
    """The two fixtures cover both class paths and both numpy module names."""
    scene, module, numpy_module = FIXTURE_CASES[folder]
    found = pickle_globals((FIXTURES / folder / "cells" / f"{scene}.pkl").read_bytes())
    assert f"{module}.Cell" in found and f"{module}.Object3d" in found
    assert f"{numpy_module}.multiarray._reconstruct" in found
    assert f"{numpy_module}.multiarray.scalar" in found


def test_fixture_direction_map():
    scene = "2013_05_28_drive_0009_sync"
    data = k360.load_scene(FIXTURES / "legacy_np1", scene)
    assert data.directions == make_fixtures.direction_map(make_fixtures.scene_values(scene))
    assert data.directions == k360.neighbour_map(data.cells)
    assert data.directions["0009_00003"]["east"] == "0009_00004"
    assert k360.load_scene(FIXTURES / "current_np2",
                           "2013_05_28_drive_0010_sync").directions is None


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_every_pickle_protocol_loads(tmp_path, monkeypatch, protocol):
    """Files from the original classes load whatever protocol wrote them.

    Protocols 0-2 need the narrow builtins.
    """
    imports = install_original_module(monkeypatch)
    values = make_fixtures.scene_values("2013_05_28_drive_0003_sync")
    cells, poses = make_fixtures.build_records(imports, values)
    for folder, records in (("cells", cells), ("poses", poses)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "2013_05_28_drive_0003_sync.pkl").write_bytes(
            pickle.dumps(records, protocol=protocol))
    data = k360.load_scene(tmp_path, "2013_05_28_drive_0003_sync")
    assert [c.id for c in data.cells] == ["0003_00003", "0003_00004"]
    assert_array(data.cells[0].objects[3].xyz, values["cells"][0]["objects"][3]["xyz"], np.float64)
    assert data.cells[0].objects[0].instance_id == 1000
    assert_array(data.poses[1].hints[0].best_offset_closest,
                 values["poses"][1]["hints"][0]["best_offset_closest"], np.float64)


# --- writer --------------------------------------------------------------------------------


def test_round_trip_preserves_every_field(tmp_path):
    cells, poses = synthetic_scene("0003", 9)
    k360.write_scene(tmp_path, "2013_05_28_drive_0003_sync", cells, poses)
    data = k360.load_scene(tmp_path, "2013_05_28_drive_0003_sync")
    assert_cells_equal(data.cells, cells)
    assert_poses_equal(data.poses, poses)
    assert data.directions == k360.neighbour_map(cells)
    assert (data.cells[0].objects[0].instance_id == 2**40 + 3
            and data.cells[0].objects[1].instance_id == -1)


def test_written_pickles_name_exactly_the_format_globals(tmp_path):
    cells, poses = synthetic_scene("0003", 3)
    k360.write_scene(tmp_path, "2013_05_28_drive_0003_sync", cells, poses)
    numpy_globals = {"numpy.core.multiarray._reconstruct", "numpy.core.multiarray.scalar",
                     "numpy.ndarray", "numpy.dtype"}
    module = "datapreparation.kitti360pose.imports"
    for folder, classes in (("cells", {"Cell", "Object3d"}),
                            ("poses", {"Pose", "DescriptionBestCell"})):
        data = (tmp_path / folder / "2013_05_28_drive_0003_sync.pkl").read_bytes()
        op, arg, _ = next(pickletools.genops(data))
        assert (op.name, arg) == ("PROTO", 4)
        assert pickle_globals(data) == numpy_globals | {f"{module}.{c}" for c in classes}


def test_writer_refuses_globals_outside_the_format():
    with pytest.raises(pickle.PicklingError, match="not part of the dataset format"):
        legacy.dumps_legacy([legacy.Cell(id=len)])
    with pytest.raises(pickle.PicklingError, match="not part of the dataset format"):
        legacy.dumps_legacy([{"offset": 1 + 2j}])  # builtins.complex


ORIGINAL_LOADER = r'''
import json, pickle, sys
import numpy as np
from datapreparation.kitti360pose import imports

with open(sys.argv[1], "rb") as f:
    cells = pickle.load(f)
with open(sys.argv[2], "rb") as f:
    poses = pickle.load(f)
out = {"numpy": np.__version__, "cells": [], "poses": []}
for c in cells:
    assert type(c) is imports.Cell and type(c.cell_size) is np.float64
    objects = []
    for o in c.objects:
        assert (type(o) is imports.Object3d and type(o.id) is int
                and isinstance(o.instance_id, np.integer))
        assert o.xyz.dtype == np.float64 and o.rgb.dtype == np.float32
        objects.append(dict(keys=list(vars(o)), id=o.id, instance_id=int(o.instance_id),
                            label=o.label, xyz=o.xyz.tolist(), rgb=o.rgb.tolist(),
                            center=o.get_center().tolist()))
    out["cells"].append(dict(keys=list(vars(c)), id=c.id, scene_name=c.scene_name,
                             cell_size=float(c.cell_size), bbox_w=c.bbox_w.tolist(),
                             center=c.get_center().tolist(), objects=objects))
for p in poses:
    assert type(p) is imports.Pose
    descriptions = []
    for d in p.descriptions:
        assert type(d) is imports.DescriptionBestCell and type(d.is_matched) is bool
        assert (isinstance(d.object_instance_id, np.integer)
                and d.object_color_rgb.dtype == np.float32)
        descriptions.append(dict(keys=list(vars(d)), instance_id=int(d.object_instance_id),
                                 offset_center=d.offset_center.tolist(),
                                 closest_point=d.closest_point.tolist(),
                                 object_id=getattr(d, "object_id", None)))
    out["poses"].append(dict(keys=list(vars(p)), pose=p.pose.tolist(), pose_w=p.pose_w.tolist(),
                             cell_id=p.cell_id, scene_name=p.scene_name,
                             described_by=p.described_by, descriptions=descriptions))
print(json.dumps(out))
'''

OTHER_PYTHONS = [pytest.param(sys.executable, id="this-numpy")]
# e.g. a venv with numpy 1.26, to check what numpy 1.x loaders see
if os.environ.get("NUMPY1_PYTHON"):
    OTHER_PYTHONS.append(pytest.param(os.environ["NUMPY1_PYTHON"], id="numpy1"))


@pytest.mark.parametrize("python", OTHER_PYTHONS)
def test_written_files_load_in_the_original_loader(tmp_path, python):
    """A plain ``pickle.load`` with the original classes importable (as in Text2Pos / Text2Loc)."""
    cells, poses = synthetic_scene("0003", 4)
    root = tmp_path / "data"
    k360.write_scene(root, "2013_05_28_drive_0003_sync", cells, poses)
    make_fixtures.install_imports_module(str(tmp_path / "modules"), "kitti360pose")
    run = subprocess.run(
        [python, "-W", "error", "-c", ORIGINAL_LOADER,
         str(k360.cells_path(root, "2013_05_28_drive_0003_sync")),
         str(k360.poses_path(root, "2013_05_28_drive_0003_sync"))],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "modules")}, capture_output=True,
        text=True, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert len(out["cells"]) == len(cells)
    for got, cell in zip(out["cells"], cells):
        assert got["keys"] == ["scene_name", "id", "objects", "cell_size", "bbox_w"]
        assert (got["id"], got["scene_name"], got["cell_size"], got["bbox_w"]) == (
            cell.id, cell.scene, 30.0, cell.bbox_w.tolist())
        np.testing.assert_allclose(got["center"], cell.center_w)
        for go, obj in zip(got["objects"], cell.objects):
            assert go["keys"] == ["id", "instance_id", "xyz", "rgb", "label"]
            assert (go["id"], go["instance_id"], go["label"]) == (obj.id, obj.instance_id,
                                                                  obj.label)
            assert go["xyz"] == obj.xyz.tolist() and go["rgb"] == obj.rgb.tolist()
    for got, pose in zip(out["poses"], poses):
        assert got["keys"] == ["pose", "pose_w", "cell_id", "descriptions", "scene_name",
                               "described_by"]
        assert (got["cell_id"], got["scene_name"], got["described_by"]) == (
            pose.cell_id, pose.scene, pose.described_by)
        assert got["pose"] == pose.pose.tolist() and got["pose_w"] == pose.pose_w.tolist()
        for gd, hint in zip(got["descriptions"], pose.hints):
            common = ["object_instance_id", "object_label", "object_color_rgb",
                      "object_color_text", "direction", "offset_center", "offset_closest"]
            if hint.is_matched:
                want_keys = common + ["object_id", "closest_point", "best_offset_center",
                                      "best_offset_closest", "is_matched"]
            else:
                want_keys = common + ["closest_point", "is_matched"]
            assert gd["keys"] == want_keys
            assert (gd["object_id"] == hint.object_id
                    and gd["instance_id"] == hint.object_instance_id)
            assert (gd["offset_center"] == hint.offset_center.tolist()
                    and gd["closest_point"] == hint.closest_point.tolist())


def test_writer_imports_no_fake_or_deprecated_modules(tmp_path):
    """Writing leaves nothing named ``datapreparation`` in sys.modules and never imports numpy.core
    (deprecated in numpy 2); warnings are errors in this run."""
    script = (
        "import sys\n"
        "import numpy as np\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from spatialoc_ros.data import kitti360pose as k360\n"
        "from spatialoc_ros.data.schema import Cell, Hint, Object3d, Pose\n"
        "obj = Object3d(0, 7, 'road', np.zeros((2, 3)), np.zeros((2, 3), np.float32))\n"
        "cell = Cell('0003_00000', '0003', np.arange(6.0), 30.0, [obj])\n"
        "hint = Hint(7, 'road', np.zeros(3, np.float32), 'black', 'north', "
        "np.zeros(2), np.zeros(2), np.zeros(2),\n"
        "            True, 0, np.zeros(2), np.zeros(2))\n"
        "pose = Pose(np.zeros(3), np.zeros(3), cell.id, '0003', [hint], 'closest')\n"
        "k360.write_scene(sys.argv[1], '2013_05_28_drive_0003_sync', [cell], [pose])\n"
        "print(sorted(m for m in sys.modules "
        "if m.startswith(('datapreparation', 'numpy.core'))))\n"
    )
    run = subprocess.run([sys.executable, "-W", "error", "-c", script, str(tmp_path), str(REPO)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
    assert (tmp_path / "cells" / "2013_05_28_drive_0003_sync.pkl").is_file()


def test_write_is_atomic_and_validates_before_touching_files(tmp_path):
    scene = "2013_05_28_drive_0003_sync"
    cells, poses = synthetic_scene("0003", 3)
    k360.write_scene(tmp_path, scene, cells, poses)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert len(before) == 3  # cells, poses, direction; no temporary files left

    bad = synthetic_scene("0003", 3, seed=1)[0]
    bad[2].objects = []
    with pytest.raises(DataError) as excinfo:
        k360.write_scene(tmp_path, scene, bad, poses)
    assert_one_line_error(excinfo, "Cell 2", "has no objects")
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_neighbour_map_uses_exact_ten_metre_offsets():
    def cell(cid, x, y):
        return Cell(cid, "0003", np.array([x, y, 0.0, x + 30, y + 30, 30.0]), 30.0, [])

    cells = [cell("a", 0, 0), cell("b", 10, 0), cell("c", 0, 10), cell("d", 10, 10),
             cell("e", 5, 0), cell("f", -10, -10)]
    m = k360.neighbour_map(cells)
    assert list(m["a"]) == ["east", "west", "north", "south", "northeast", "northwest",
                            "southeast", "southwest"]
    assert m["a"] == dict(east="b", west=None, north="c", south=None, northeast="d",
                          northwest=None, southeast=None, southwest="f")
    assert m["d"]["west"] == "c" and m["d"]["south"] == "b" and m["d"]["southwest"] == "a"
    assert all(v is None for v in m["e"].values())  # 5 m away is not a grid neighbour
    assert "e" not in m["a"].values()


# --- hostile pickles -----------------------------------------------------------------------


class SystemCall:
    """Unpickling runs ``os.system('touch <marker>')``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class EvalCall:
    """Unpickling runs ``eval`` of code that creates the marker."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import builtins

        return builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",)


class PopenCall:
    """Unpickling starts ``touch <marker>`` as a process."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return subprocess.Popen, (["touch", str(self.marker)],)


HOSTILE = [
    pytest.param(SystemCall, "posix.system", id="os.system"),
    pytest.param(EvalCall, "builtins.eval", id="eval"),
    pytest.param(PopenCall, "subprocess.Popen", id="Popen"),
]


def _marker_appears(marker, wait=0.5):
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if marker.exists():
            return True
        time.sleep(0.02)
    return marker.exists()


@pytest.mark.parametrize("payload, _name", HOSTILE)
def test_hostile_payloads_are_live(tmp_path, payload, _name):
    """Control: a plain pickle.loads really runs each payload.

    So the refusal tests mean something.
    """
    marker = tmp_path / "ran"
    result = pickle.loads(pickle.dumps([payload(marker)]))
    if isinstance(result[0], subprocess.Popen):
        result[0].wait()
    assert _marker_appears(marker)


@pytest.mark.parametrize("payload, name", HOSTILE)
def test_hostile_pickle_is_refused_and_nothing_runs(tmp_path, payload, name):
    scene = "2013_05_28_drive_0003_sync"
    marker = tmp_path / "ran"
    path = k360.cells_path(tmp_path, scene)
    path.parent.mkdir()
    path.write_bytes(pickle.dumps([payload(marker)]))
    with pytest.raises(DataError) as excinfo:
        k360.read_cells(path)
    message = assert_one_line_error(excinfo, path, f"refused to load: forbidden global '{name}'")
    assert message == f"{path}: refused to load: forbidden global '{name}'"
    assert not _marker_appears(marker)


def test_hostile_object_nested_inside_a_cell_is_refused(tmp_path, monkeypatch):
    imports = install_original_module(monkeypatch)
    marker = tmp_path / "ran"
    values = make_fixtures.scene_values("2013_05_28_drive_0003_sync")
    cells, poses = make_fixtures.build_records(imports, values)
    cells[1].objects.insert(3, SystemCall(marker))
    poses[0].descriptions[2].object_color_rgb = EvalCall(marker)
    for folder, records in (("cells", cells), ("poses", poses)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "2013_05_28_drive_0003_sync.pkl").write_bytes(pickle.dumps(records))
    with pytest.raises(DataError) as excinfo:
        k360.read_cells(k360.cells_path(tmp_path, "2013_05_28_drive_0003_sync"))
    assert_one_line_error(excinfo, "cells/2013_05_28_drive_0003_sync.pkl",
                          "forbidden global 'posix.system'")
    with pytest.raises(DataError) as excinfo:
        k360.load_scene(tmp_path, "2013_05_28_drive_0003_sync")
    assert_one_line_error(excinfo, "forbidden global 'posix.system'")
    with pytest.raises(DataError) as excinfo:
        k360.read_poses(k360.poses_path(tmp_path, "2013_05_28_drive_0003_sync"))
    assert_one_line_error(excinfo, "poses/2013_05_28_drive_0003_sync.pkl",
                          "forbidden global 'builtins.eval'")
    assert not _marker_appears(marker)


def test_original_classes_are_never_used_even_when_importable(tmp_path, monkeypatch):
    """With the original module importable, and made to leave a trace when used,
    loading still resolves to the inert stand-ins."""
    imports = install_original_module(monkeypatch)
    marker = tmp_path / "ran"
    imports.Cell.__setstate__ = lambda self, state: marker.touch()
    cells, poses = synthetic_scene("0003", 2)
    k360.write_scene(tmp_path, "2013_05_28_drive_0003_sync", cells, poses)
    plain = pickle.loads(k360.cells_path(tmp_path, "2013_05_28_drive_0003_sync").read_bytes())
    assert type(plain[0]) is imports.Cell
    assert marker.exists()  # control: the trap works with a plain load
    marker.unlink()
    loaded = k360.read_cells(k360.cells_path(tmp_path, "2013_05_28_drive_0003_sync"))
    assert type(loaded[0]) is Cell and not marker.exists()


CRAFTED = [
    # (pickle bytes, what the error must say)
    pytest.param(b"cnumpy\nload\n(S'x'\ntR.", "forbidden global 'numpy.load'", id="numpy.load"),
    pytest.param(b"cdatapreparation.kitti360pose.imports\nEvil\n)R.",
                 "forbidden global 'datapreparation.kitti360pose.imports.Evil'",
                 id="other-class-same-module"),
    pytest.param(b"cnumpy.core.multiarray\nfromfile\n)R.",
                 "forbidden global 'numpy.core.multiarray.fromfile'", id="other-numpy-function"),
    pytest.param(b"\x80\x04\x8c\x09os\nsystem\x8c\x01x\x93.", "forbidden global 'os\\nsystem.x'",
                 id="newline-in-name"),
    pytest.param(b"\x80\x04\x82\x01.", "corrupt pickle", id="unregistered-extension"),
    pytest.param(b"c_codecs\nencode\n(S'x'\nS'zlib'\ntR.", "only encode(str, 'latin1')",
                 id="codecs-other-encoding"),
    pytest.param(b"c__builtin__\nbytes\n(I1000000000000\ntR.", "only bytes()", id="bytes-bomb"),
    pytest.param(b"ccopy_reg\n_reconstructor\n(c__builtin__\nobject\nc__builtin__\nobject\nNtR.",
                 "only empty dataset records", id="reconstructor-other-class"),
    pytest.param(b"\x80\x04\x8c$datapreparation.kitti360pose.imports"
                 b"\x8c\x04Cell\x93)\x81K\x01K\x02\x86b.",
                 "state must be a dict", id="record-with-non-dict-state"),
    pytest.param(b"\x80\x04\x8e" + (2**62).to_bytes(8, "little") + b".", "corrupt pickle",
                 id="huge-length"),
    pytest.param(b"P1\n.", "corrupt pickle", id="persistent-id"),
]


@pytest.mark.parametrize("data, expected", CRAFTED)
def test_crafted_pickles_are_refused(tmp_path, data, expected):
    path = tmp_path / "cells.pkl"
    path.write_bytes(data)
    with pytest.raises(DataError) as excinfo:
        k360.read_cells(path)
    assert_one_line_error(excinfo, f"{path}: ", expected)


def test_allow_list_is_exactly_the_format():
    records = {"Cell", "Object3d", "Pose", "DescriptionBestCell", "DescriptionPoseCell"}
    expected = {(m, c)
                for m in ("datapreparation.kitti360.imports",
                          "datapreparation.kitti360pose.imports")
                for c in records}
    for core in ("numpy.core", "numpy._core"):
        expected |= {(f"{core}.multiarray", "_reconstruct"), (f"{core}.multiarray", "scalar"),
                     (f"{core}.numeric", "_frombuffer")}
    expected |= {("numpy", "ndarray"), ("numpy", "dtype")}
    expected |= {("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
                 ("__builtin__", "object"), ("builtins", "object"), ("_codecs", "encode"),
                 ("__builtin__", "bytes"), ("builtins", "bytes")}
    assert set(legacy.ALLOWED_GLOBALS) == expected
    for (module, name), target in legacy.ALLOWED_GLOBALS.items():
        if module.startswith("datapreparation"):
            assert target is getattr(legacy, name) and issubclass(target, legacy.LegacyRecord)


# --- malformed files and folders -----------------------------------------------------------


def test_truncated_empty_and_garbage_files(tmp_path):
    scene = "2013_05_28_drive_0003_sync"
    cells, poses = synthetic_scene("0003", 3)
    k360.write_scene(tmp_path, scene, cells, poses)
    path = k360.cells_path(tmp_path, scene)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 1, 0):
        path.write_bytes(data[:cut])
        with pytest.raises(DataError) as excinfo:
            k360.read_cells(path)
        assert_one_line_error(excinfo, path, "truncated")
    path.write_bytes(b"\x00garbage that is not a pickle")
    with pytest.raises(DataError) as excinfo:
        k360.load_scene(tmp_path, scene)
    assert_one_line_error(excinfo, path, "corrupt pickle")


@pytest.mark.parametrize(
    "records, expected",
    [
        pytest.param({"cells": []}, "expected a list of Cell, got dict", id="dict"),
        pytest.param([1, 2], "Cell 0: expected Cell, got int", id="list-of-int"),
        pytest.param(None, "expected a list of Cell, got NoneType", id="none"),
    ],
)
def test_wrong_top_level_type(tmp_path, records, expected):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(records))
    with pytest.raises(DataError) as excinfo:
        k360.read_cells(path)
    assert_one_line_error(excinfo, path, expected)


def test_poses_file_where_cells_are_expected(tmp_path):
    cells, poses = synthetic_scene("0003", 3)
    k360.write_scene(tmp_path, "2013_05_28_drive_0003_sync", cells, poses)
    with pytest.raises(DataError) as excinfo:
        k360.read_cells(k360.poses_path(tmp_path, "2013_05_28_drive_0003_sync"))
    assert_one_line_error(excinfo, "poses/2013_05_28_drive_0003_sync.pkl",
                          "Cell 0: expected Cell, got Pose")
    with pytest.raises(DataError) as excinfo:
        k360.read_poses(k360.cells_path(tmp_path, "2013_05_28_drive_0003_sync"))
    assert_one_line_error(excinfo, "Pose 0: expected Pose, got Cell")


def test_cell_without_objects(tmp_path, monkeypatch):
    imports = install_original_module(monkeypatch)
    cells, _ = make_fixtures.build_records(
        imports, make_fixtures.scene_values("2013_05_28_drive_0003_sync"))
    cells[1].objects = []
    path = tmp_path / "cells.pkl"
    path.write_bytes(pickle.dumps(cells))
    with pytest.raises(DataError) as excinfo:
        k360.read_cells(path)
    assert_one_line_error(excinfo, path, "Cell 1", "'0003_00004' has no objects")


def test_malformed_record_names_cell_and_object(tmp_path, monkeypatch):
    imports = install_original_module(monkeypatch)
    cells, _ = make_fixtures.build_records(
        imports, make_fixtures.scene_values("2013_05_28_drive_0003_sync"))
    cells[0].objects[4].xyz = cells[0].objects[4].xyz[:, :2]
    path = tmp_path / "cells.pkl"
    path.write_bytes(pickle.dumps(cells))
    with pytest.raises(DataError) as excinfo:
        k360.read_cells(path)
    assert_one_line_error(excinfo, path,
                          "'0003_00003', object 4: xyz must have shape [N, 3], got [4, 2]")
    del cells[0].objects[4].label
    cells[0].objects[4].xyz = np.full((3, 3), np.nan)
    path.write_bytes(pickle.dumps(cells))
    with pytest.raises(DataError) as excinfo:
        k360.read_cells(path)
    assert_one_line_error(excinfo, "object 4: xyz contains NaN")


def test_matched_hint_without_best_cell_attributes(tmp_path, monkeypatch):
    imports = install_original_module(monkeypatch)
    _, poses = make_fixtures.build_records(
        imports, make_fixtures.scene_values("2013_05_28_drive_0003_sync"))
    del poses[1].descriptions[2].best_offset_center
    path = tmp_path / "poses.pkl"
    path.write_bytes(pickle.dumps(poses))
    with pytest.raises(DataError) as excinfo:
        k360.read_poses(path)
    assert_one_line_error(excinfo, path,
                          "Pose 1: description 2: missing attribute 'best_offset_center'")


def test_missing_folder(tmp_path):
    missing = tmp_path / "nowhere"
    for call in (lambda: k360.load_scene(missing, "2013_05_28_drive_0003_sync"),
                 lambda: k360.available_scenes(missing),
                 lambda: k360.load_split(missing, "val")):
        with pytest.raises(DataError) as excinfo:
            call()
        assert_one_line_error(excinfo, missing, "dataset folder not found")


def test_missing_scene_file(tmp_path):
    scene = "2013_05_28_drive_0003_sync"
    cells, poses = synthetic_scene("0003", 3)
    k360.write_scene(tmp_path, scene, cells, poses)
    assert k360.available_scenes(tmp_path) == [scene]
    k360.poses_path(tmp_path, scene).unlink()
    assert k360.available_scenes(tmp_path) == []
    with pytest.raises(DataError) as excinfo:
        k360.load_scene(tmp_path, scene)
    assert_one_line_error(excinfo, k360.poses_path(tmp_path, scene), "file not found")
    with pytest.raises(DataError) as excinfo:
        k360.load_scene(tmp_path, "2013_05_28_drive_0005_sync")
    assert_one_line_error(excinfo, k360.cells_path(tmp_path, "2013_05_28_drive_0005_sync"),
                          "file not found")
    with pytest.raises(DataError) as excinfo:
        k360.read_cells(tmp_path / "cells" / "none.pkl")
    assert_one_line_error(excinfo, tmp_path / "cells" / "none.pkl", "file not found")


def test_scene_names_cannot_leave_the_folder(tmp_path):
    with pytest.raises(DataError, match="invalid scene name"):
        k360.load_scene(tmp_path, "../etc/passwd")
    with pytest.raises(DataError, match="invalid scene name"):
        k360.write_scene(tmp_path, "a/b", [], [])


def test_malformed_direction_file(tmp_path):
    scene = "2013_05_28_drive_0003_sync"
    cells, poses = synthetic_scene("0003", 3)
    k360.write_scene(tmp_path, scene, cells, poses)
    path = k360.directions_path(tmp_path, scene)
    for text, expected in (("{not json", "not valid JSON"), ("[1]", "expected a JSON object"),
                           ('{"0003_00000": {"up": null}}', "bad neighbour 'up'")):
        path.write_text(text)
        with pytest.raises(DataError) as excinfo:
            k360.load_scene(tmp_path, scene)
        assert_one_line_error(excinfo, path, expected)


# --- splits --------------------------------------------------------------------------------


def _write_two_scenes(root, second_first_idx=0, n=(7, 6)):
    a_cells, a_poses = synthetic_scene("0003", n[0], seed=1)
    b_cells, b_poses = synthetic_scene("0005", n[1], seed=2, first_idx=second_first_idx, x0=1000.0)
    k360.write_scene(root, "2013_05_28_drive_0003_sync", a_cells, a_poses)
    k360.write_scene(root, "2013_05_28_drive_0005_sync", b_cells, b_poses)
    return a_cells + b_cells, a_poses + b_poses


def test_split_pools_scenes(tmp_path):
    cells, poses = _write_two_scenes(tmp_path)
    split = k360.load_split(tmp_path, ["2013_05_28_drive_0003_sync", "2013_05_28_drive_0005_sync"])
    assert split.scenes == ["2013_05_28_drive_0003_sync", "2013_05_28_drive_0005_sync"]
    assert ([c.id for c in split.cells] == [c.id for c in cells]
            and len(split.cells) >= MIN_CELLS_PER_SPLIT)
    assert set(split.cells_by_id) == {c.id for c in cells}
    assert all(split.cells_by_id[c.id] is c for c in split.cells)
    assert_poses_equal(split.poses, poses)
    assert set(split.directions) == set(split.cells_by_id)


def test_named_split(tmp_path):
    cells, poses = synthetic_scene("0010", 12)
    k360.write_scene(tmp_path, "2013_05_28_drive_0010_sync", cells, poses, directions=False)
    split = k360.load_split(tmp_path, "val")
    assert split.name == "val" and len(split.cells) == 12 and split.directions is None
    with pytest.raises(DataError) as excinfo:
        k360.load_split(tmp_path, "test")  # its scenes are not in the folder
    assert_one_line_error(excinfo, "cells/2013_05_28_drive_0003_sync.pkl", "file not found")
    with pytest.raises(DataError, match="unknown split 'nope'"):
        k360.load_split(tmp_path, "nope")


def test_split_refuses_duplicate_cell_ids(tmp_path):
    _write_two_scenes(tmp_path)
    # scene 0005 re-uses the ids of scene 0003 when its cells are renamed to the 0003 prefix
    cells, poses = synthetic_scene("0003", 6, seed=3, first_idx=2, x0=2000.0)
    k360.write_scene(tmp_path, "2013_05_28_drive_0005_sync", cells, [])
    with pytest.raises(DataError) as excinfo:
        k360.load_split(tmp_path, ["2013_05_28_drive_0003_sync", "2013_05_28_drive_0005_sync"])
    assert_one_line_error(excinfo, "cells/2013_05_28_drive_0005_sync.pkl",
                          "'0003_00002' already used in", "cells/2013_05_28_drive_0003_sync.pkl")


def test_split_refuses_too_few_cells(tmp_path):
    _write_two_scenes(tmp_path, n=(5, 4))
    with pytest.raises(DataError) as excinfo:
        k360.load_split(tmp_path, ["2013_05_28_drive_0003_sync", "2013_05_28_drive_0005_sync"])
    assert_one_line_error(excinfo, "has 9 cells", f"at least {MIN_CELLS_PER_SPLIT}")
    # one more cell is enough
    _write_two_scenes(tmp_path, n=(5, 5))
    assert len(k360.load_split(tmp_path, ["2013_05_28_drive_0003_sync",
                                          "2013_05_28_drive_0005_sync"]).cells) == 10


def test_split_refuses_pose_without_its_cell(tmp_path):
    _write_two_scenes(tmp_path)
    cells, poses = synthetic_scene("0005", 6, seed=2, x0=1000.0)
    poses[1].cell_id = "0005_00042"
    k360.write_scene(tmp_path, "2013_05_28_drive_0005_sync", cells, poses)
    with pytest.raises(DataError) as excinfo:
        k360.load_split(tmp_path, ["2013_05_28_drive_0003_sync", "2013_05_28_drive_0005_sync"])
    assert_one_line_error(excinfo, "poses/2013_05_28_drive_0005_sync.pkl", "Pose 1",
                          "'0005_00042'")
