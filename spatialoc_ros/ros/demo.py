"""``make demo``: the localizer node in its own process, queried over DDS as a
speech-to-text node would.

1. Start ``spatialoc-localizer`` on the demo map (its own process, its own DDS
   domain, discovery limited to this host) with the shipped weights, sentences
   accumulated across messages.
2. From this process, publish held-out descriptions of the map on ``query``:
   most as one message each, one as several utterances (two sentences per
   message, like a speech-to-text node that publishes per pause), and the last
   one spoken: said as a person would ("I'm north of a gray building and ..."),
   synthesised with espeak-ng, transcribed offline with pocketsphinx, and the
   transcript published as it was heard.
3. For each answer print the text (and for the spoken one, what was heard and
   its word error rate), the best position ± 1 sigma, the ground truth, the
   error in metres and the latency from the last utterance to the pose; draw
   all of them on the map (prediction, 1- and 2-sigma ellipses, ground truth)
   into a PNG.

Exit status 1 if the node did not answer every query, 2 if it did not start.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..data.constants import VAL_SCENES

NODE = "spatialoc_localizer"
NAMESPACE = "/spatialoc"
# asked until the node answers it (it is then active)
PROBE = "The pose is north of a gray building."
SILENCE_TIMEOUT_S = 1.5  # the node closes a query without sentence ends after this silence


@dataclass
class _Hyp:
    rank: int
    cell_id: str
    position: np.ndarray


@dataclass
class Answer:
    """What came back for one query, shaped like the parts of ``inference.Localization`` that are
    drawn."""

    text: str
    hints: List[str]
    hypotheses: List[_Hyp]
    covariance_xy: np.ndarray
    status: int
    reason: str
    latency_ms: float  # from the last utterance sent to the pose received
    node_latency_ms: float  # inside the node

    @property
    def best(self) -> _Hyp:
        return self.hypotheses[0]

    @property
    def sigma_m(self) -> float:
        from ..core.covariance import sigma_radius_m

        return sigma_radius_m(self.covariance_xy)


def pick_queries(map_dir: str, scene: Optional[str], count: int, seed: int):
    """``count`` poses of the map (one scene), spread over it, with their texts and true
    positions."""
    from ..data.kitti360pose import available_scenes, load_scene

    scenes = [scene] if scene else available_scenes(map_dir)
    data = load_scene(map_dir, scenes[0])
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(data.poses), min(count, len(data.poses)),
                               replace=False).tolist())
    return scenes[0], [data.poses[i] for i in picked]


def utterances(text: str, split: bool) -> List[str]:
    """The messages a speech-to-text node would send: the whole text, or two sentences at a
    time."""
    from ..networks.text_encoder import split_sentences

    if not split:
        return [text]
    sentences = split_sentences(text)
    return [" ".join(sentences[i:i + 2]) for i in range(0, len(sentences), 2)]


def start_node(map_dir, weights, scene, params_file, env, log_path,
               accumulate: bool = True) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("spatialoc-localizer")
    cmd = [str(exe), "--ros-args", "--params-file", str(params_file),
           "-p", f"map_path:={map_dir}", "-p", f"weights_dir:={weights}",
           "-p", f"scenes:=['{scene}']",
           "-p", f"accumulate:={'true' if accumulate else 'false'}",
           "-p", f"silence_timeout_s:={SILENCE_TIMEOUT_S}",
           "-p", "max_hints:=6", "-r", f"__ns:={NAMESPACE}"]
    log = open(log_path, "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


class NodeSession:
    """A localizer node process and a client on a DDS domain of their own, the node made active.

    ``with NodeSession(...) as (node, client, startup_s):``; raises RuntimeError (with the node
    log's path) if the node does not subscribe or become active in time.
    """

    def __init__(self, map_dir, weights, scene, params_file, log_path,
                 domain_id: Optional[int] = None, accumulate: bool = True,
                 startup_timeout_s: float = 600.0):
        self.args = (map_dir, weights, scene, params_file)
        self.log_path, self.accumulate, self.timeout = (Path(log_path), accumulate,
                                                        startup_timeout_s)
        domain = domain_id if domain_id is not None else random.Random().randint(100, 200)
        self.env = dict(os.environ, ROS_DOMAIN_ID=str(domain),
                        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
        self.env.pop("ROS_LOCALHOST_ONLY", None)

    def __enter__(self):
        os.environ.update({k: self.env[k]
                           for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
        os.environ.pop("ROS_LOCALHOST_ONLY", None)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.node = start_node(*self.args, self.env, self.log_path, self.accumulate)
        self.client = Client()
        try:
            if not self.client.wait_for_node(60.0):
                raise RuntimeError(f"the node did not subscribe to its query topic; see "
                                   f"{self.log_path}")
            started = time.monotonic()
            while True:  # the node answers NOT_READY (5) until it is active
                probe = self.client.ask(PROBE, [PROBE], 10.0)
                if probe is not None and probe.status != 5:
                    break
                self.client.spin_until(lambda: False, 1.0)
                if self.node.poll() is not None or time.monotonic() - started > self.timeout:
                    raise RuntimeError(f"the node did not become active; see {self.log_path}")
        except BaseException:
            self.__exit__()
            raise
        return self.node, self.client, time.monotonic() - started

    def __exit__(self, *exc):
        self.client.close()
        self.node.terminate()
        try:
            self.node.wait(10)
        except subprocess.TimeoutExpired:
            self.node.kill()
        return False


def measure_dds_latency(map_dir="data/demo_map", weights="models", scene=VAL_SCENES[0],
                        params_file="config/localize.yaml", queries: int = 30, seed: int = 0,
                        log_path="out/bench_node.log") -> dict:
    """Median and 95th percentile of query-to-pose latency over DDS (one message per query)."""
    _, poses = pick_queries(map_dir, scene, queries, seed)
    with NodeSession(map_dir, weights, scene, params_file, log_path,
                     accumulate=False) as (_, client, startup):
        latencies = []
        for pose in poses:
            ans = client.ask(pose.text, [pose.text], 60.0)
            if ans is not None and np.isfinite(ans.latency_ms):
                latencies.append(ans.latency_ms)
    if not latencies:
        raise RuntimeError(f"the node answered no query; see {log_path}")
    v = np.asarray(latencies)
    return {"median": float(np.median(v)), "p95": float(np.percentile(v, 95)), "n": int(len(v)),
            "startup_s": startup, "map": str(map_dir), "scene": scene}


class Client:
    """The speech-to-text side: publishes utterances, collects results and poses."""

    def __init__(self):
        import rclpy
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String

        from spatialoc_ros.msg import LocalizationResult

        rclpy.init()
        self.rclpy = rclpy
        self.node = rclpy.create_node("speech_to_text_demo", namespace=NAMESPACE)
        latched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pub = self.node.create_publisher(
            String, "query", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.results: List = []
        self.poses: Dict[tuple, object] = {}
        self.node.create_subscription(LocalizationResult, "result", self.results.append, latched)
        self.node.create_subscription(PoseWithCovarianceStamped, "pose",
                                      lambda m: self.poses.__setitem__(_stamp(m.header),
                                                                       (m, time.monotonic())),
                                      latched)
        self.String = String

    def spin_until(self, done, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            self.rclpy.spin_once(self.node, timeout_sec=0.05)
            if done():
                return True
        return False

    def wait_for_node(self, timeout_s: float) -> bool:
        return self.spin_until(lambda: self.pub.get_subscription_count() > 0, timeout_s)

    def ask(self, text: str, parts: List[str], timeout_s: float) -> Optional[Answer]:
        """Send the utterances; the answer is the first new result for this text (whitespace,
        case and punctuation aside: accumulated utterances come back as sentences)."""
        seen = len(self.results)
        key = _words(text)

        def answer():
            return next((r for r in self.results[seen:] if _words(r.query) == key), None)

        for i, part in enumerate(parts):
            if i:
                self.spin_until(lambda: False, 0.4)  # a short pause between utterances
            self.pub.publish(self.String(data=part))
        sent = time.monotonic()
        if not self.spin_until(lambda: answer() is not None, timeout_s):
            return None
        res = answer()
        got = self.poses.get(_stamp(res.header))
        if got is None:
            self.spin_until(lambda: _stamp(res.header) in self.poses, 2.0)
            got = self.poses.get(_stamp(res.header))
        hyps = [_Hyp(h.rank, h.cell_id, np.array([h.pose.pose.position.x, h.pose.pose.position.y,
                                                  h.pose.pose.position.z]))
                for h in res.hypotheses]
        cov = np.eye(2)
        latency = float("nan")
        if got is not None:
            pose, received = got
            c = np.asarray(pose.pose.covariance).reshape(6, 6)
            cov = c[:2, :2].copy()
            latency = 1e3 * (received - sent)
        from ..networks.text_encoder import split_sentences

        return Answer(res.query, split_sentences(res.query), hyps, cov, res.status, res.reason,
                      latency, res.latency_ms)

    def close(self):
        self.node.destroy_node()
        self.rclpy.shutdown()


def _words(text: str) -> str:
    return " ".join(re.findall(r"[\w'-]+", text.lower()))


def _stamp(header) -> tuple:
    return header.stamp.sec, header.stamp.nanosec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="spatialoc-demo",
                                description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--map", default="data/demo_map")
    p.add_argument("--scene", default=VAL_SCENES[0])
    p.add_argument("--weights", default="models")
    p.add_argument("--params-file", default="config/localize.yaml")
    p.add_argument("--queries", type=int, default=6)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default="out/demo_localization.png")
    p.add_argument("--startup-timeout", type=float, default=600.0,
                   help="seconds for the node to become active")
    p.add_argument("--domain-id", type=int, default=None,
                   help="DDS domain of the demo (default: a random one in 100-200, away from a "
                        "robot's)")
    p.add_argument("--no-speech", action="store_true",
                   help="send the last description as text too, not spoken")
    args = p.parse_args(argv)

    scene, poses = pick_queries(args.map, args.scene, args.queries, args.seed)
    log_path = Path(args.out).with_suffix(".node.log")
    print(f"starting the localizer node (map {args.map}, scene {scene}, weights {args.weights}); "
          f"its log: {log_path}")
    speaker = None if args.no_speech else Speaker.start(Path(args.out).parent)
    answers: List[Optional[Answer]] = []
    try:
        with NodeSession(args.map, args.weights, scene, args.params_file, log_path, args.domain_id,
                         startup_timeout_s=args.startup_timeout) as (_, client, startup):
            print(f"node active after {startup:.1f} s\n")
            for i, pose in enumerate(poses):
                if speaker is not None and i == len(poses) - 1:
                    said, heard = speaker.say(pose.text)
                    ans = client.ask(heard.text, [heard.text], 60.0)
                    answers.append(ans)
                    _print(i, pose, [heard.text], ans, said=said, heard=heard)
                    continue
                parts = utterances(pose.text, split=i == 1)
                ans = client.ask(pose.text, parts, 60.0)
                answers.append(ans)
                _print(i, pose, parts, ans)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    ok = [i for i, a in enumerate(answers)
          if a is not None and a.status in (0, 1) and a.hypotheses]
    if ok:
        _draw(args.map, scene, poses, answers, args.out)
        errs = [np.linalg.norm(answers[i].best.position[:2] - poses[i].pose_w[:2]) for i in ok]
        lat = [answers[i].latency_ms for i in ok]
        print(f"\n{len(ok)}/{len(poses)} queries answered; median error {np.median(errs):.1f} m; "
              f"median latency query-to-pose {np.median(lat):.0f} ms over DDS")
        print(f"picture: {args.out}")
    return 0 if len(ok) == len(poses) else 1


@dataclass
class Heard:
    """A spoken description as the recogniser heard it."""

    text: str
    word_error: float  # against what was said
    audio_s: float
    transcribe_s: float


class Speaker:
    """A person saying a description: espeak-ng speaks it, pocketsphinx transcribes it."""

    def __init__(self, transcriber, wav_path: Path):
        self.transcriber, self.wav_path = transcriber, wav_path

    @classmethod
    def start(cls, folder: Path) -> Optional["Speaker"]:
        """A speaker, or None (and why, printed) when espeak-ng or pocketsphinx is missing."""
        from ..errors import SpatialocError
        from ..speech import Transcriber, espeak_path

        try:
            espeak_path()
            transcriber = Transcriber()
        except SpatialocError as exc:
            print(f"no spoken query: {exc}; the last description goes as text")
            return None
        folder.mkdir(parents=True, exist_ok=True)
        return cls(transcriber, folder / "demo_spoken_query.wav")

    def say(self, text: str):
        """(what was said, :class:`Heard`) for a templated description."""
        from ..speech import read_wav, spoken_description, synthesize, word_error_rate

        said = spoken_description(text)
        synthesize(said, self.wav_path)
        samples, rate = read_wav(self.wav_path)
        started = time.monotonic()
        heard = self.transcriber.transcribe(samples, rate)
        return said, Heard(heard, word_error_rate(said, heard), len(samples) / rate,
                           time.monotonic() - started)


def _print(i, pose, parts, ans: Optional[Answer], said: Optional[str] = None,
           heard: Optional[Heard] = None) -> None:
    if heard is not None:
        print(f"[{i + 1}] {pose.text}  (spoken)")
        print(f"    said  \"{said}\"  ({heard.audio_s:.1f} s of espeak-ng speech)")
        print(f"    heard \"{heard.text}\"  (word error {100 * heard.word_error:.0f} %, "
              f"pocketsphinx {heard.transcribe_s:.2f} s; published as one message, which the "
              f"node closes after {SILENCE_TIMEOUT_S:g} s of silence)")
    else:
        how = f"as {len(parts)} utterances" if len(parts) > 1 else "as one message"
        print(f"[{i + 1}] {pose.text}  ({how})")
    if ans is None:
        print("    no answer")
        return
    if not ans.hypotheses:  # refused, e.g. nothing was heard
        print(f"    no pose (status {ans.status}: {ans.reason})")
        return
    truth = pose.pose_w[:2]
    best = ans.best.position
    err = float(np.linalg.norm(best[:2] - truth))
    print(f"    pose  x {best[0]:8.1f}  y {best[1]:8.1f}  ± {ans.sigma_m:.1f} m (1 sigma)   "
          f"truth x {truth[0]:8.1f}  y {truth[1]:8.1f}   error {err:.1f} m   "
          f"latency {ans.latency_ms:.0f} ms (node {ans.node_latency_ms:.0f} ms)"
          + ("" if ans.status == 0 else f"   [{ans.reason}]"))


def _draw(map_dir, scene, poses, answers, out) -> None:
    from ..data.kitti360pose import load_scene
    from ..evaluation.pictures import Shown, draw_localizations

    cells = {c.id: c for c in load_scene(map_dir, scene).cells}
    shown = [Shown(a, p.pose_w[:2], f"{i + 1}") for i, (a, p) in enumerate(zip(answers, poses))
             if a is not None and a.hypotheses]
    draw_localizations(shown, cells, out,
                       title=f"{len(shown)} spoken queries, scene {scene}: prediction "
                             f"(1σ, 2σ ellipses) and ground truth")


if __name__ == "__main__":
    sys.exit(main())
