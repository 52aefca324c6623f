"""The localizer node as users run it: a separate process, talking over DDS.

One node process serves the module (started once on the tiny map's val scene
with briefly trained weights); a test-side rclpy node (:class:`Probe`) sends
queries and records poses, results, markers, the map cloud and diagnostics.
Configure failures and a refused parameter start processes of their own. The
last tests run the node in this process with a stand-in model, to make it fail
or keep it busy on demand.
"""
import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseWithCovarianceStamped
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import ListParameters, SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import String
from visualization_msgs.msg import Marker, MarkerArray

import conftest
from spatialoc_ros.msg import LocalizationResult
from spatialoc_ros.ros.parameters import PARAMETERS

REPO = Path(__file__).resolve().parents[1]
LOCALIZER = Path(sys.executable).parent / "spatialoc-localizer"
CONFIG = REPO / "config" / "localize.yaml"
VAL_SCENE = "2013_05_28_drive_0010_sync"
NS = "/spatialoc_test"
NODE = f"{NS}/spatialoc_localizer"
GOOD = "The pose is north of a gray building. The pose is on-top of a dark-green sidewalk."
YAW_VARIANCE = 2.5
TOP_K = 5
CLOUD_POINTS = 3000
ROS_BUILTIN_PARAMETERS = {"use_sim_time", "start_type_description_service"}
ENV_KEYS = ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_STATIC_PEERS",
            "ROS_LOCALHOST_ONLY")

LATCHED = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                     reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
ALL_RESULTS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_ALL,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
QUERIES = QoSProfile(depth=1000, history=HistoryPolicy.KEEP_LAST,
                     reliability=ReliabilityPolicy.RELIABLE)


def start_localizer(env, log_path, *params):
    """``spatialoc-localizer --ros-args --params-file config/localize.yaml -r __ns:=NS -p ...``."""
    cmd = [str(LOCALIZER), "--ros-args", "--params-file", str(CONFIG), "-r", f"__ns:={NS}"]
    for p in params:
        cmd += ["-p", p]
    env = dict(env, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RCUTILS_LOGGING_BUFFERED_STREAM="0",
               ROS_LOG_DIR=str(log_path.parent / "ros_log"))
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                text=True)


def stop(proc, timeout=30):
    """SIGTERM, then the exit status (killed and failed if it does not stop)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("the node did not stop on SIGTERM")
    return proc.returncode


def log_lines(log_path, needle):
    return [line for line in log_path.read_text(errors="replace").splitlines() if needle in line]


def stamp_of(msg):
    return msg.header.stamp.sec, msg.header.stamp.nanosec


class Probe:
    """A test-side rclpy node recording what the localizer publishes.

    It has its own context and spins in a thread.
    """

    def __init__(self, env):
        # rcl reads the domain and discovery range from the environment at init.
        self._saved_env = {k: os.environ.get(k) for k in ENV_KEYS}
        for k in ENV_KEYS:
            if k in env:
                os.environ[k] = env[k]
            else:
                os.environ.pop(k, None)
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("probe", context=self.context)
        self.cond = threading.Condition()
        self.results, self.poses, self.markers, self.clouds, self.diagnostics = [], [], [], [], []
        n = self.node
        n.create_subscription(LocalizationResult, f"{NS}/result", self._keep(self.results),
                              ALL_RESULTS)
        n.create_subscription(PoseWithCovarianceStamped, f"{NS}/pose", self._keep(self.poses),
                              LATCHED)
        n.create_subscription(MarkerArray, f"{NS}/markers", self._keep(self.markers), LATCHED)
        n.create_subscription(PointCloud2, f"{NS}/map_cloud", self._keep(self.clouds), LATCHED)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._keep(self.diagnostics), 50)
        self.queries = n.create_publisher(String, f"{NS}/query", QUERIES)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _keep(self, store):
        def keep(msg):
            with self.cond:
                store.append(msg)
                self.cond.notify_all()
        return keep

    def wait(self, predicate, timeout, what):
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), f"no {what} within {timeout} s"

    def send(self, text):
        self.queries.publish(String(data=text))

    def results_for(self, text):
        with self.cond:
            return [r for r in self.results if r.query == text]

    def result_for(self, text, timeout=60):
        self.wait(lambda: any(r.query == text for r in self.results), timeout,
                  f"result for {text[:40]!r}")
        (result,) = self.results_for(text)
        return result

    def pose_for(self, result, timeout=10):
        self.wait(lambda: any(stamp_of(p) == stamp_of(result) for p in self.poses), timeout,
                  "pose")
        return next(p for p in self.poses if stamp_of(p) == stamp_of(result))

    def has_pose_for(self, result):
        with self.cond:
            return any(stamp_of(p) == stamp_of(result) for p in self.poses)

    def call(self, srv_type, name, request, timeout=60):
        client = self.node.create_client(srv_type, name)
        try:
            assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
            done = threading.Event()
            future = client.call_async(request)
            future.add_done_callback(lambda _: done.set())
            assert done.wait(timeout), f"no answer from {name} within {timeout} s"
            return future.result()
        finally:
            self.node.destroy_client(client)

    def state(self):
        return self.call(GetState, f"{NODE}/get_state", GetState.Request()).current_state.id

    def wait_state(self, state_id, proc, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the node exited with status {proc.returncode}"
            if self.state() == state_id:
                return
            time.sleep(0.2)
        pytest.fail(f"the node did not reach state {state_id} within {timeout} s")

    def transition(self, transition_id):
        return self.call(ChangeState, f"{NODE}/change_state",
                         ChangeState.Request(transition=Transition(id=transition_id))).success

    def set_parameters(self, **values):
        request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                    for k, v in values.items()])
        response = self.call(SetParameters, f"{NODE}/set_parameters", request)
        assert all(r.successful for r in response.results), [r.reason for r in response.results]

    def wait_subscribed(self, timeout=30):
        deadline = time.monotonic() + timeout
        while self.queries.get_subscription_count() == 0:
            assert time.monotonic() < deadline, "the node does not subscribe to query"
            time.sleep(0.05)

    def diagnostic(self, predicate, timeout=30):
        """The first localizer status (arrived from now on) that satisfies ``predicate``.

        ``predicate(level, message, values)``.
        """
        start = len(self.diagnostics)

        def found():
            for array in self.diagnostics[start:]:
                for s in array.status:
                    if s.name.endswith("spatialoc_localizer: localizer") and predicate(
                            s.level, s.message, {kv.key: kv.value for kv in s.values}):
                        return True
            return False

        self.wait(found, timeout, "matching diagnostics")

    def close(self):
        self.executor.shutdown()
        self.thread.join(10)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def module_ros_env():
    """conftest's ``ros_env`` held for the whole module: one node process serves all its tests."""
    with contextlib.contextmanager(conftest.ros_env.__wrapped__)() as env:
        yield env


@pytest.fixture(scope="module")
def localizer_node(module_ros_env, tiny_dataset, tiny_weights, tmp_path_factory):
    """(process, probe, log path) of an active localizer on the tiny map's val scene."""
    log = tmp_path_factory.mktemp("localizer") / "node.log"
    proc = start_localizer(
        module_ros_env, log, f"map_path:={tiny_dataset}", f"scenes:=[{VAL_SCENE}]",
        f"weights_dir:={tiny_weights}", f"cache_dir:={tiny_weights / 'cache'}", "device:=cpu",
        f"top_k:={TOP_K}", f"yaw_variance:={YAW_VARIANCE}", "low_confidence_sigma_m:=1000000.0",
        f"map_cloud_max_points:={CLOUD_POINTS}", "diagnostics_period_s:=0.2")
    probe = Probe(module_ros_env)
    try:
        probe.wait_state(State.PRIMARY_STATE_ACTIVE, proc)
        probe.wait_subscribed()
        yield proc, probe, log
    finally:
        probe.close()
        stop(proc)
        print(log.read_text(errors="replace")[-3000:])


def check_pose_covariance(cov36, yaw_variance):
    c = np.asarray(cov36, float).reshape(6, 6)
    assert np.isfinite(c).all() and (c >= 0).all() and (c <= 1e9).all()
    assert np.array_equal(c, c.T)
    assert np.linalg.eigvalsh(c[:2, :2]).min() > 0, "x/y block positive definite"
    assert c[2, 2] == c[3, 3] == c[4, 4] == 0.0 and c[5, 5] == yaw_variance


@pytest.mark.timeout(300)
def test_valid_query_gets_pose_result_markers_and_map_cloud(localizer_node):
    proc, probe, _ = localizer_node
    probe.send(GOOD)
    result = probe.result_for(GOOD)
    assert result.status == LocalizationResult.STATUS_OK and result.reason == ""
    assert result.header.frame_id == "map" and result.latency_ms > 0
    assert [h.rank for h in result.hypotheses] == list(range(TOP_K))
    scores = [h.score for h in result.hypotheses]
    assert scores == sorted(scores, reverse=True)
    for h in result.hypotheses:
        assert h.cell_id.startswith("0010_") and h.precision > 0
        check_pose_covariance(h.pose.covariance, YAW_VARIANCE)

    pose = probe.pose_for(result)
    assert pose.header.frame_id == "map"
    q, p = pose.pose.pose.orientation, pose.pose.pose.position
    assert [q.x, q.y, q.z, q.w] == [0.0, 0.0, 0.0, 1.0]
    assert np.isfinite([p.x, p.y, p.z]).all()
    assert (p.x, p.y) == (result.hypotheses[0].pose.pose.position.x,
                          result.hypotheses[0].pose.pose.position.y)
    check_pose_covariance(pose.pose.covariance, YAW_VARIANCE)

    # the query text, then what the front end understood of it
    probe.wait(lambda: any(m.markers and m.markers[-1].text.startswith(GOOD + "\nunderstood")
                           for m in probe.markers), 10, "markers")
    markers = next(m for m in probe.markers if m.markers[-1].text.startswith(GOOD)).markers
    assert markers[0].action == Marker.DELETEALL
    assert (sum(m.ns == "cells" for m in markers) == TOP_K
            and sum(m.ns == "ellipse" for m in markers) == 1)

    probe.wait(lambda: probe.clouds, 10, "map cloud")
    cloud = probe.clouds[0]
    assert 0 < cloud.width <= CLOUD_POINTS and cloud.point_step == 16
    assert len(cloud.data) == cloud.width * cloud.point_step and cloud.header.frame_id == "map"
    assert proc.poll() is None


@pytest.mark.timeout(300)
def test_bad_input_gets_a_status_and_no_pose_and_the_node_goes_on(localizer_node):
    proc, probe, log = localizer_node
    cases = [("", LocalizationResult.STATUS_EMPTY_QUERY),
             (" \n\t ", LocalizationResult.STATUS_EMPTY_QUERY),
             ("north of a building " * 5000, LocalizationResult.STATUS_QUERY_TOO_LONG),  # 100 kB
             ("\x01\x02\x7f\x1b[31m\ufffd\x03", LocalizationResult.STATUS_NOT_TEXT)]
    for text, _ in cases:
        probe.send(text)
    for text, status in cases:
        result = probe.result_for(text)
        assert result.status == status and result.reason and "\n" not in result.reason
        assert not result.hypotheses
        time.sleep(0.2)  # a pose would have arrived by now
        assert not probe.has_pose_for(result)
    assert len(log_lines(log, "query rejected")) >= len(cases)

    # Text that names nothing the model knows is localized anyway, and flagged.
    german = "Die Position ist nördlich eines grauen Gebäudes. Sie steht auf einem Gehweg."
    probe.send(german)
    result = probe.result_for(german)
    assert (result.status == LocalizationResult.STATUS_LOW_CONFIDENCE
            and "names a direction and a class" in result.reason)
    assert len(result.hypotheses) == TOP_K and result.understood_share == 0.0
    assert result.understood and not any(c.used for c in result.understood)
    check_pose_covariance(probe.pose_for(result).pose.covariance, YAW_VARIANCE)

    # Words at random, a description of nothing in the map, one clause understood among many
    # that are not, one very long clause, and more clauses than the node reads
    vague = ["banana keyboard sunshine river table cloud",
             "I'm north of a spaceship and east of a dragon",
             "I'm north of a grey building, a pole is behind me, it is sunny, I like music",
             "I am north of a " + "very " * 300 + "grey building",
             " ".join(["I'm north of a pole."] * 40)]
    for text in vague:
        probe.send(text)
    statuses = [probe.result_for(t) for t in vague]
    low, ok = LocalizationResult.STATUS_LOW_CONFIDENCE, LocalizationResult.STATUS_OK
    assert [r.status for r in statuses[:3]] == [low] * 3 and statuses[3].status in (ok, low)
    assert statuses[4].status == LocalizationResult.STATUS_QUERY_TOO_LONG
    assert "understood 1 of 4 clauses" in statuses[2].reason
    assert [c.used for c in statuses[2].understood] == [True, False, False, False]
    assert statuses[3].understood[0].hint == "The pose is north of a gray building."

    after = GOOD + " The pose is west of a black pole."
    probe.send(after)
    assert probe.result_for(after).status == LocalizationResult.STATUS_OK
    assert proc.poll() is None


@pytest.mark.timeout(300)
def test_a_burst_drops_the_oldest_queries_and_counts_them(localizer_node):
    proc, probe, log = localizer_node
    texts = [f"{GOOD} The pose is east of pole number {i}." for i in range(500)]
    start = time.monotonic()
    for i, text in enumerate(texts):  # 100 Hz
        time.sleep(max(0.0, start + 0.01 * i - time.monotonic()))
        probe.send(text)
    # Answers come in queue order, so once the query sent last is answered, every
    # result of the burst is in.
    after = GOOD + " The pose is south of a green vegetation."
    probe.send(after)
    assert probe.result_for(after, timeout=120).status == LocalizationResult.STATUS_OK
    assert proc.poll() is None

    answers = {text: probe.results_for(text) for text in texts}
    assert all(len(a) <= 1 for a in answers.values()), "one result per query"
    statuses = [a[0].status for a in answers.values() if a]
    dropped = statuses.count(LocalizationResult.STATUS_DROPPED)
    assert set(statuses) <= {LocalizationResult.STATUS_OK, LocalizationResult.STATUS_DROPPED}
    assert dropped > 0 and statuses.count(LocalizationResult.STATUS_OK) > 0
    assert all("queue" in a[0].reason for a in answers.values()
               if a and a[0].status != LocalizationResult.STATUS_OK)
    assert log_lines(log, "dropped the oldest waiting query")

    # Every query the node took in got exactly one result, and the drops are counted.
    with probe.cond:
        seen = len(probe.results)
        total_dropped = sum(r.status == LocalizationResult.STATUS_DROPPED for r in probe.results)
    probe.diagnostic(lambda level, message, v: level == DiagnosticStatus.OK
                     and v["model"] == "loaded" and v["queries received"] == str(seen)
                     and v["queries dropped"] == str(total_dropped))


@pytest.mark.timeout(120)
def test_declared_parameters_are_those_of_the_yaml(localizer_node):
    proc, probe, _ = localizer_node
    names = probe.call(ListParameters, f"{NODE}/list_parameters",
                       ListParameters.Request()).result.names
    assert set(names) - ROS_BUILTIN_PARAMETERS == {p.name for p in PARAMETERS}


@pytest.mark.timeout(300)
def test_lifecycle_and_accumulated_utterances(localizer_node):
    proc, probe, _ = localizer_node
    probe.set_parameters(accumulate=True, silence_timeout_s=1.0, max_hints=3)
    assert probe.transition(Transition.TRANSITION_DEACTIVATE)
    probe.send("The pose is north of a gray building while inactive.")
    refused = probe.result_for("The pose is north of a gray building while inactive.")
    assert refused.status == LocalizationResult.STATUS_NOT_READY and not refused.hypotheses
    assert probe.transition(Transition.TRANSITION_CLEANUP)
    assert probe.state() == State.PRIMARY_STATE_UNCONFIGURED
    assert probe.transition(Transition.TRANSITION_CONFIGURE)
    assert probe.transition(Transition.TRANSITION_ACTIVATE)

    # Two utterances (speech-to-text leaves out the periods), the second within
    # the silence timeout: one query.
    probe.send("The pose is west of a black pole")
    time.sleep(0.3)
    probe.send("The pose is on-top of a gray road")
    joined = probe.result_for("The pose is west of a black pole. "
                              "The pose is on-top of a gray road.")
    assert joined.status == LocalizationResult.STATUS_OK and len(joined.hypotheses) == TOP_K
    probe.pose_for(joined)

    # max_hints (3) sentences close a query at once; the fourth starts the next one.
    parts = ["The pose is south of a gray building.", "The pose is east of a black lamp.",
             "The pose is south of a green vegetation.", "The pose is west of a beige garage."]
    for part in parts:
        probe.send(part)
    assert probe.result_for(" ".join(parts[:3])).status == LocalizationResult.STATUS_OK
    assert probe.result_for(parts[3]).status == LocalizationResult.STATUS_OK

    # Back to one query per message.
    probe.set_parameters(accumulate=False, max_hints=12)
    for transition in ("DEACTIVATE", "CLEANUP", "CONFIGURE", "ACTIVATE"):
        assert probe.transition(getattr(Transition, f"TRANSITION_{transition}")), transition
    probe.send(parts[0])
    assert probe.result_for(parts[0]).status == LocalizationResult.STATUS_OK
    assert proc.poll() is None


# --- processes of their own -------------------------------------------------------------------


def wrong_shape_weights(weights, out):
    """A copy of ``weights`` whose fine stage has one tensor of another shape; returns its name."""
    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir()
    for f in weights.iterdir():
        if f.is_file() and f.suffix in (".json", ".safetensors"):
            shutil.copy(f, out / f.name)
    tensors = load_file(out / "fine.safetensors")
    name = next(k for k, t in tensors.items() if t.ndim == 2)
    rows, cols = tensors[name].shape
    tensors[name] = torch.zeros(rows + 1, cols, dtype=tensors[name].dtype)
    save_file(tensors, out / "fine.safetensors")
    return name


@pytest.mark.timeout(300)
def test_missing_map_and_wrong_weights_fail_configure_with_one_line(ros_env, tiny_dataset,
                                                                    tiny_weights, tmp_path):
    log = tmp_path / "node.log"
    missing = tmp_path / "no_such_map"
    proc = start_localizer(ros_env, log, f"map_path:={missing}", f"weights_dir:={tiny_weights}",
                           "device:=cpu", "diagnostics_period_s:=0.2")
    probe = Probe(ros_env)
    try:
        deadline = time.monotonic() + 120
        while not log_lines(log, "]: configure failed:"):
            assert proc.poll() is None and time.monotonic() < deadline, (
                log.read_text(errors="replace"))
            time.sleep(0.2)
        (line,) = log_lines(log, "]: configure failed:")
        assert f"{missing}: no such map folder" in line and "[ERROR]" in line
        assert "Traceback" not in log.read_text(errors="replace")

        # Alive, unconfigured, and saying why.
        assert probe.state() == State.PRIMARY_STATE_UNCONFIGURED
        probe.wait_subscribed()
        probe.send(GOOD)
        result = probe.result_for(GOOD)
        assert (result.status == LocalizationResult.STATUS_NOT_READY
                and "no such map folder" in result.reason)
        probe.diagnostic(lambda level, message, v: level == DiagnosticStatus.ERROR
                         and "no such map folder" in message and v["model"] == "not loaded")

        # A lifecycle manager's second try, now with a weights file of the wrong shape.
        tensor = wrong_shape_weights(tiny_weights, tmp_path / "weights")
        probe.set_parameters(map_path=str(tiny_dataset), scenes=[VAL_SCENE],
                             weights_dir=str(tmp_path / "weights"),
                             cache_dir=str(tiny_weights / "cache"))
        assert not probe.transition(Transition.TRANSITION_CONFIGURE)
        assert probe.state() == State.PRIMARY_STATE_UNCONFIGURED
        lines = log_lines(log, "]: configure failed:")
        assert len(lines) == 2 and "fine.safetensors" in lines[1] and repr(tensor) in lines[1]
        assert proc.poll() is None
    finally:
        probe.close()
        status = stop(proc)
    assert status == 0, log.read_text(errors="replace")


@pytest.mark.timeout(120)
def test_a_refused_parameter_ends_the_start_with_one_line(ros_env, tmp_path):
    log = tmp_path / "node.log"
    proc = start_localizer(ros_env, log, "top_k:=0")
    assert proc.wait(60) == 2
    errors = log_lines(log, "spatialoc-localizer: error:")
    assert len(errors) == 1 and "top_k" in errors[0]


# --- the node's query handling in this process, with a stand-in model -------------------------


class FakeLocalizer:
    """Stands in for inference.Localizer: answers from one cell, fails on request, can be held."""

    release = None  # a threading.Event that localize() waits for, when set by a test

    def __init__(self, map_dir, weights, scenes=None, device="auto", cache=None, top_k=10,
                 max_chars=2000, max_hints=12, retriever="two-stage", retriever_options=None,
                 cell_rows="auto"):
        from spatialoc_ros.data.schema import Cell, Object3d

        assert cell_rows in ("auto", "memory", "store")

        points = np.random.default_rng(0).random((50, 3))
        cell = Cell("0010_00001", "0010", np.array([0.0, 0.0, 0.0, 30.0, 30.0, 30.0]), 30.0,
                    [Object3d(0, 0, "building", points, np.full((50, 3), 0.5, np.float32))])
        self.map = types.SimpleNamespace(cells=[cell], cells_by_id={cell.id: cell})
        self.num_cells, self.device, self.max_chars = 1, "cpu", max_chars

    def localize(self, text):
        from spatialoc_ros.inference import Hypothesis, Localization
        from spatialoc_ros.core.query_text import check_text

        if FakeLocalizer.release is not None:
            FakeLocalizer.release.wait(30)
        text = check_text(text, self.max_chars)
        if "explode" in text:
            raise RuntimeError("the model broke\nacross two lines")
        xy = np.nan if "nan" in text else 15.0
        hyp = Hypothesis(0, "0010_00001", "0010", 1.0, np.array([xy, 15.0, 0.0]), np.eye(2), 4.0)
        return Localization(text, [text], [hyp], np.eye(2) * 4.0, 1)


@pytest.fixture
def inprocess_node(ros_env, monkeypatch):
    """(node, probe): a LocalizerNode in this process, configured and active.

    It has a stand-in model and a queue of 3.
    """
    from spatialoc_ros.ros.node import LocalizerNode

    monkeypatch.setattr("spatialoc_ros.inference.Localizer", FakeLocalizer)
    FakeLocalizer.release = None
    probe = Probe(ros_env)
    node = LocalizerNode(context=probe.context, namespace=NS, parameter_overrides=[
        Parameter("autostart", value=False), Parameter("queue_size", value=3),
        Parameter("low_confidence_sigma_m", value=100.0)])
    try:
        probe.executor.add_node(node)
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        probe.wait_subscribed()
        yield node, probe
    finally:
        if FakeLocalizer.release is not None:
            FakeLocalizer.release.set()
        node.release()
        probe.executor.remove_node(node)
        node.destroy_node()
        probe.close()


@pytest.mark.timeout(120)
def test_an_unexpected_failure_is_an_internal_error_and_the_node_goes_on(inprocess_node):
    node, probe = inprocess_node
    for text in ("Please explode now.", "The pose is nan of a building."):
        probe.send(text)
        result = probe.result_for(text, timeout=30)
        assert result.status == LocalizationResult.STATUS_INTERNAL_ERROR and not result.hypotheses
        assert result.reason and "\n" not in result.reason
        assert not probe.has_pose_for(result)
    assert ("RuntimeError: the model broke across two lines"
            in probe.results_for("Please explode now.")[0].reason)
    probe.send("North of a gray building.")
    result = probe.result_for("North of a gray building.", timeout=30)
    assert result.status == LocalizationResult.STATUS_OK
    assert probe.pose_for(result).pose.pose.position.x == 15.0
    assert node.stats.errors == 2 and node.stats.answered == 1


@pytest.mark.timeout(120)
def test_while_the_model_is_busy_the_oldest_waiting_queries_are_dropped(inprocess_node):
    node, probe = inprocess_node
    FakeLocalizer.release = threading.Event()
    texts = [f"North of building {i}." for i in range(10)]
    probe.send(texts[0])  # taken by the worker, which now waits
    time.sleep(0.5)
    for text in texts[1:]:
        probe.send(text)
    probe.wait(lambda: sum(r.status == LocalizationResult.STATUS_DROPPED
                           for r in probe.results) == 6, 30, "6 DROPPED results")
    FakeLocalizer.release.set()
    status = {t: probe.result_for(t, timeout=30).status for t in texts}
    assert [t for t in texts if status[t] == LocalizationResult.STATUS_DROPPED] == texts[1:7], (
        "oldest first")
    assert all(status[t] == LocalizationResult.STATUS_OK for t in [texts[0]] + texts[7:])
    assert node.stats.dropped == 6 and node.stats.received == 10
