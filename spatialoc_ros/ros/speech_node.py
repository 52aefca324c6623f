"""``spatialoc_speech``: WAV files in, transcripts out on ``query``, for the localizer node.

    python -m spatialoc_ros.ros.speech_node --ros-args [-r __ns:=/spatialoc] \\
        [-p wav_file:=said.wav] [-p language_model:=descriptions]

Subscribes to ``audio_file`` (std_msgs/String: the path of a 16-bit PCM WAV
file), transcribes each file offline with :class:`spatialoc_ros.speech.Transcriber`
(pocketsphinx; its model ships in the wheel) and publishes the words heard on
``query`` (std_msgs/String), as they were heard. ``wav_file``, when set, is
transcribed once at start, as soon as something subscribes to ``query`` (or
after ``wait_for_subscriber_s``). A file that cannot be read, or in which nothing
is heard, is logged and publishes nothing.

pocketsphinx is imported when the node starts, not when the package is.
"""
from __future__ import annotations

import sys
import time

import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from .main import spin_until_shutdown

NODE_NAME = "spatialoc_speech"


class SpeechNode(Node):
    """Transcribes WAV files named on ``audio_file`` and publishes the text on ``query``."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        from ..speech import Transcriber

        self.declare_parameter("wav_file", "")
        self.declare_parameter("language_model", "descriptions")
        self.declare_parameter("wait_for_subscriber_s", 10.0)
        model = self.get_parameter("language_model").value
        self.transcriber = Transcriber(model)
        self.get_logger().info(f"speech model loaded in {self.transcriber.load_s:.1f} s "
                               f"(language model: {model})")
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = self.create_publisher(String, "query", reliable)
        self.create_subscription(String, "audio_file", lambda m: self.hear(m.data), reliable)
        self.heard = []  # transcripts published, in order
        self._pending = self.get_parameter("wav_file").value
        self._started = time.monotonic()
        if self._pending:
            self._timer = self.create_timer(0.1, self._hear_start_file)

    def _hear_start_file(self) -> None:
        waited = time.monotonic() - self._started
        limit = float(self.get_parameter("wait_for_subscriber_s").value)
        if self.pub.get_subscription_count() == 0 and waited < limit:
            return
        self._timer.cancel()
        path, self._pending = self._pending, ""
        self.hear(path)

    def hear(self, path: str):
        """Transcribe one WAV file and publish the words; the text, or None."""
        from ..errors import SpatialocError

        started = time.monotonic()
        try:
            text = self.transcriber.transcribe(path)
        except (SpatialocError, OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.get_logger().error(f"cannot transcribe {path!r}: {' '.join(why.split())}")
            return None
        if not text:
            self.get_logger().warning(f"heard nothing in {path!r}")
            return None
        self.pub.publish(String(data=text))
        self.heard.append(text)
        self.get_logger().info(f"heard {text!r} in {path} ({time.monotonic() - started:.2f} s)")
        return text


def main(args=None) -> int:
    from ..allocator import tune_allocator

    tune_allocator()
    rclpy.init(args=args)
    try:
        node = SpeechNode()
    except Exception as exc:  # pocketsphinx missing, a bad parameter: one line
        print(f"spatialoc_speech: error: {' '.join(str(exc).split())}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    spin_until_shutdown(node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
