"""The localizer node over DDS on a map built by ``spatialoc map build``: everything it
publishes is in the frame the map was built for, and within the map.

The test writes a scene as labelled PLY windows (``data synth --ply``), builds a map from
them in frame ``odom`` and serves it with the tiny weights, as test_ros_node.py serves a
KITTI360Pose map (its process and probe helpers, the same isolation).
"""
import json

import numpy as np
import pytest
from lifecycle_msgs.msg import State
from scipy.spatial import cKDTree

from spatialoc_ros.core.map_source import BuiltMap
from spatialoc_ros.msg import LocalizationResult
from test_ros_node import Probe, log_lines, start_localizer, stop

SCENE = "2013_05_28_drive_0010_sync"
FRAME = "odom"
CLOUD_POINTS = 3000
FLOAT32_SLACK_M = 1e-3  # the cloud's float32 coordinates against the map's float64 points
# A map object's point is the mean of the PLY points in its voxel (0.25 m at most).
VOXEL_DIAGONAL_M = 0.25 * np.sqrt(3.0) + 1e-3


@pytest.fixture
def built_map(tmp_path):
    """(map folder, PLY folder, the scene's queries): scene 0010 of the tiny preset written as PLY
    windows and built into a map in frame ``odom`` along its drive."""
    from spatialoc_ros.data.map_build import build_map
    from spatialoc_ros.data.synth import synthesize

    ply = tmp_path / "ply"
    synthesize("tiny", seed=0, out=tmp_path / "kitti", progress=False, ply_dir=ply,
               scenes=[SCENE])
    scene = ply / SCENE
    out = tmp_path / "map"
    build_map([scene], out, frame_id=FRAME, trajectory=scene / "poses.txt", progress=False)
    lines = (scene / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    return out, ply, [json.loads(line) for line in lines if line.strip()]


def map_extent(folder):
    """(min xyz, max xyz) of the union of the built map's cell boxes, world metres."""
    boxes = np.array([c.bbox_w for c in BuiltMap(folder).cells])
    return boxes[:, :3].min(axis=0), boxes[:, 3:].max(axis=0)


def map_points(folder):
    """[N, 3] world points of every object of the built map's cells."""
    return np.concatenate([c.to_world(o.xyz) for c in BuiltMap(folder).cells
                           for o in c.objects if len(o.xyz)])


def ply_points(ply):
    """[N, 3] points of the PLY windows of the scene."""
    import plyfile

    clouds = [plyfile.PlyData.read(str(f))["vertex"].data
              for f in sorted((ply / SCENE).rglob("*.ply"))]
    assert clouds, f"no PLY files under {ply / SCENE}"
    return np.concatenate([np.stack([c["x"], c["y"], c["z"]], axis=1) for c in clouds])


def cloud_xyz(cloud):
    """[N, 3] float64 points of the node's map cloud (fields x, y, z, rgb: float32)."""
    offsets = {f.name: f.offset for f in cloud.fields}
    assert [offsets[a] for a in "xyz"] == [0, 4, 8] and cloud.point_step == 16
    rows = np.frombuffer(bytes(cloud.data), dtype="<f4").reshape(-1, 4)
    return rows[:, :3].astype(np.float64)


@pytest.mark.timeout(300)
def test_a_built_map_serves_in_its_own_frame(ros_env, built_map, tiny_weights, tmp_path):
    folder, ply, queries = built_map
    assert BuiltMap(folder).frame_id == FRAME and queries
    lo, hi = map_extent(folder)
    log = tmp_path / "node.log"
    # frame_id stays the parameter's default ("map"): the map's own frame replaces it. The
    # cells are served from the map's store, as a city-sized map's are (its points read from the
    # memory-mapped cells file when a query or the map cloud needs them).
    proc = start_localizer(ros_env, log, f"map_path:={folder}", f"weights_dir:={tiny_weights}",
                           "device:=cpu", "low_confidence_sigma_m:=1000000.0",
                           f"map_cloud_max_points:={CLOUD_POINTS}", "cell_rows:=store")
    probe = Probe(ros_env)
    try:
        probe.wait_state(State.PRIMARY_STATE_ACTIVE, proc)
        probe.wait_subscribed()
        text, pose_w = queries[0]["text"], queries[0]["pose_w"]
        assert queries[0]["scene"] == SCENE and np.all((lo <= pose_w) & (pose_w <= hi))
        probe.send(text)
        result = probe.result_for(text)
        assert result.status in (LocalizationResult.STATUS_OK,
                                 LocalizationResult.STATUS_LOW_CONFIDENCE), result.reason
        assert result.header.frame_id == FRAME and result.hypotheses

        # The pose: in the map's frame and within the map (tiny weights: not near pose_w).
        pose = probe.pose_for(result)
        assert pose.header.frame_id == FRAME
        p = pose.pose.pose.position
        assert np.all((lo <= [p.x, p.y, p.z]) & ([p.x, p.y, p.z] <= hi)), (p, lo, hi)
        for h in result.hypotheses:
            xy = [h.pose.pose.position.x, h.pose.pose.position.y]
            assert np.all((lo[:2] <= xy) & (xy <= hi[:2])), (h.cell_id, xy, lo, hi)

        probe.wait(lambda: probe.markers, 10, "markers")
        assert {m.header.frame_id for m in probe.markers[-1].markers} == {FRAME}

        # The latched map cloud: the same frame, and every point one of the map's (its cells
        # keep instance objects whole that stick out of them, so points may lie outside the
        # cell boxes) and within a voxel of a point of the PLY files it was built from.
        probe.wait(lambda: probe.clouds, 10, "map cloud")
        (cloud,) = probe.clouds
        assert cloud.header.frame_id == FRAME and 0 < cloud.width <= CLOUD_POINTS
        xyz = cloud_xyz(cloud)
        assert len(xyz) == cloud.width and np.isfinite(xyz).all()
        for source, tolerance in ((map_points(folder), FLOAT32_SLACK_M),
                                  (ply_points(ply), VOXEL_DIAGONAL_M)):
            distance, _ = cKDTree(source).query(xyz)
            assert distance.max() <= tolerance, (distance.max(), tolerance)
        assert np.all((lo <= xyz.mean(axis=0)) & (xyz.mean(axis=0) <= hi))
        assert not log_lines(log, "is ignored"), "the default frame_id gives way silently"
        assert proc.poll() is None
    finally:
        probe.close()
        status = stop(proc)
        print(log.read_text(errors="replace")[-3000:])
    assert status == 0
