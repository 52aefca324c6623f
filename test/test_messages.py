"""The custom messages: importable next to our own modules, and sent over DDS.

The generated module ``spatialoc_ros.msg`` and our code are two folders named
``spatialoc_ros`` in a virtualenv (site-packages and this repository); these
tests prove that one process sees both, whatever its working directory.
"""
import inspect
import json
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message

import spatialoc_ros
import spatialoc_ros.data.schema  # noqa: F401  (our half of the package)
from spatialoc_ros.msg import Hypothesis, LocalizationResult  # the generated half

REPO = Path(__file__).resolve().parents[1]

# Everything below is exactly representable in float32, so it compares with ==.
EXPECTED = {
    "frame_id": "map",
    "stamp": [1700000000, 250],
    "query": "The pose is north of a gray building. Stätte ✓",
    "status": "STATUS_LOW_CONFIDENCE",
    "reason": "few hints matched known objects",
    "latency_ms": 12.25,
    "hypotheses": [
        {"cell_id": "0010_00042", "rank": 0, "score": 0.875, "precision": 16.0,
         "xyz": [812.5, -103.25, 114.0], "cov_xy": [3.5, 0.25, 4.0], "cov_yaw": 9.75},
        {"cell_id": "0010_00043", "rank": 1, "score": 0.5, "precision": 2.5,
         "xyz": [830.0, -95.5, 113.5], "cov_xy": [22.5, 0.0, 22.5], "cov_yaw": 9.75},
    ],
}


def covariance(cov_xy, cov_yaw):
    """Row-major 6x6 over (x, y, z, roll, pitch, yaw)."""
    c = [0.0] * 36
    c[0], c[1], c[7] = cov_xy
    c[6] = c[1]
    c[35] = cov_yaw
    return c


def build_result(spec):
    """A LocalizationResult from a dict shaped like EXPECTED."""
    msg = LocalizationResult()
    msg.header.frame_id = spec["frame_id"]
    msg.header.stamp.sec, msg.header.stamp.nanosec = spec["stamp"]
    msg.query = spec["query"]
    msg.status = getattr(LocalizationResult, spec["status"])
    msg.reason = spec["reason"]
    msg.latency_ms = spec["latency_ms"]
    for h in spec["hypotheses"]:
        hyp = Hypothesis(cell_id=h["cell_id"], rank=h["rank"], score=h["score"],
                         precision=h["precision"])
        p = hyp.pose.pose.position
        p.x, p.y, p.z = h["xyz"]
        hyp.pose.covariance = covariance(h["cov_xy"], h["cov_yaw"])
        msg.hypotheses.append(hyp)
    return msg


# The publisher subprocess: the two functions above, then publish once and
# stay until the test closes stdin.
PUBLISHER = '''\
import json
import sys

import rclpy
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

import spatialoc_ros.data.schema  # both halves of the package in this process too
from spatialoc_ros.msg import Hypothesis, LocalizationResult


''' + inspect.getsource(covariance) + "\n\n" + inspect.getsource(build_result) + '''

topic, spec = sys.argv[1], json.loads(sys.argv[2])
rclpy.init()
node = rclpy.create_node("result_publisher")
qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                 reliability=ReliabilityPolicy.RELIABLE,
                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
pub = node.create_publisher(LocalizationResult, topic, qos)
pub.publish(build_result(spec))
print("published", flush=True)
sys.stdin.readline()  # keep the latched sample on offer until the test is done
node.destroy_node()
rclpy.try_shutdown()
'''

LATCHED = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                     reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


def check_result(msg):
    """Every field of a received LocalizationResult against EXPECTED."""
    assert msg.header.frame_id == EXPECTED["frame_id"]
    assert [msg.header.stamp.sec, msg.header.stamp.nanosec] == EXPECTED["stamp"]
    assert msg.query == EXPECTED["query"]
    assert msg.status == LocalizationResult.STATUS_LOW_CONFIDENCE
    assert msg.reason == EXPECTED["reason"]
    assert msg.latency_ms == EXPECTED["latency_ms"]
    assert len(msg.hypotheses) == len(EXPECTED["hypotheses"])
    for got, want in zip(msg.hypotheses, EXPECTED["hypotheses"]):
        assert isinstance(got, Hypothesis)
        assert (got.cell_id, got.rank, got.score, got.precision) == (
            want["cell_id"], want["rank"], want["score"], want["precision"])
        p = got.pose.pose.position
        assert [p.x, p.y, p.z] == want["xyz"]
        q = got.pose.pose.orientation
        assert [q.x, q.y, q.z, q.w] == [0.0, 0.0, 0.0, 1.0]  # identity by default
        assert list(got.pose.covariance) == covariance(want["cov_xy"], want["cov_yaw"])


def test_both_halves_of_the_package_in_one_process():
    assert Path(spatialoc_ros.__file__) == REPO / "spatialoc_ros" / "__init__.py"
    assert not (REPO / "spatialoc_ros" / "msg").exists(), "would hide the generated module"
    assert LocalizationResult.__module__.startswith("spatialoc_ros.msg")


def test_both_halves_import_from_any_directory(tmp_path):
    probe = (
        "import json, spatialoc_ros, spatialoc_ros.data.schema as s, spatialoc_ros.msg as m\n"
        "from spatialoc_ros.msg import LocalizationResult, Hypothesis\n"
        "print(json.dumps([spatialoc_ros.__file__, s.__file__, m.__file__]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    init, schema, msg = (Path(p) for p in json.loads(out.stdout.splitlines()[-1]))
    assert init == REPO / "spatialoc_ros" / "__init__.py"
    assert schema == REPO / "spatialoc_ros" / "data" / "schema.py"
    assert msg.parent.name == "msg" and msg.parent.parent.name == "spatialoc_ros"


def test_status_constants():
    names = [n for n in dir(LocalizationResult) if n.startswith("STATUS_")]
    values = [getattr(LocalizationResult, n) for n in names]
    assert LocalizationResult.STATUS_OK == 0
    assert len(names) >= 5 and len(set(values)) == len(values), dict(zip(names, values))


def test_serialization_round_trip():
    msg = build_result(EXPECTED)
    check_result(deserialize_message(serialize_message(msg), LocalizationResult))


def _read_line(proc, deadline):
    """One stdout line of ``proc``, or None once ``deadline`` has passed."""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        if ready:
            return proc.stdout.readline().strip()
    return None


@pytest.mark.timeout(90)
def test_result_crosses_processes(ros_env_here, tmp_path):
    topic = f"/spatialoc_test_{uuid.uuid4().hex[:8]}/result"
    # A different working directory: the subprocess must find both halves too.
    pub = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, topic, json.dumps(EXPECTED)], env=ros_env_here,
        cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)

    context = rclpy.Context()
    executor = node = None
    try:
        line = _read_line(pub, time.monotonic() + 20)
        if line != "published":
            pub.kill()
            pytest.fail(f"publisher did not start ({line!r}): {pub.communicate()[1][-2000:]}")

        # Subscribe only now: the sample must reach us through TRANSIENT_LOCAL.
        rclpy.init(context=context)
        node = rclpy.create_node("result_listener", context=context)
        received = []
        node.create_subscription(LocalizationResult, topic, received.append, LATCHED)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + 15
        while not received and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        assert received, "no LocalizationResult within 15 s"
        check_result(received[0])
        types = dict(node.get_topic_names_and_types())
        assert types[topic] == ["spatialoc_ros/msg/LocalizationResult"]

        _, err = pub.communicate(input="done\n", timeout=15)
        assert pub.returncode == 0, err[-2000:]
    finally:
        if pub.poll() is None:
            pub.kill()
            pub.wait()
        # Shutdown order (as in spatialoc_ros/ros/main.py): executor, node, context.
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)
