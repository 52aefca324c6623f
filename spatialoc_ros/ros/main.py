"""Entry point of ``spatialoc-localizer`` (``ros2 run spatialoc_ros localizer``).

    spatialoc-localizer --ros-args --params-file config/localize.yaml \\
        [-p name:=value ...] [-r __ns:=/spatialoc]

Spins the node on a single-threaded executor until Ctrl-C or SIGTERM, then
stops cleanly with exit status 0 (also when the signal lands while the
executor builds its wait set). The model runs on a worker thread of the
node, so the executor only takes in queries; one thread keeps that intake
fast (rclpy's multi-threaded executor hands each message between threads and
fell behind a 100 Hz burst on a busy machine). A parameter value the node
refuses at start-up (wrong type, out of range) ends it with one line on stderr
and exit status 2.
"""
from __future__ import annotations

import sys

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

EXIT_OK = 0
EXIT_BAD_PARAMETER = 2


def main(args=None) -> int:
    """Run the localizer node until shut down; returns the exit status."""
    from ..allocator import tune_allocator
    from .node import LocalizerNode

    tune_allocator()
    rclpy.init(args=args)
    try:
        node = LocalizerNode()
    except ParameterException as exc:
        print(f"spatialoc-localizer: error: {' '.join(str(exc).split())}", file=sys.stderr)
        rclpy.try_shutdown()
        return EXIT_BAD_PARAMETER
    spin_until_shutdown(node, node.release)
    return EXIT_OK


def spin_until_shutdown(node, release=lambda: None) -> None:
    """Spin ``node`` on its own single-threaded executor until Ctrl-C or SIGTERM, then stop:
    ``release`` (the node's threads), the executor, the node, the context."""
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except _rclpy.RCLError:
        # A signal can shut the context down between the executor's own check and
        # its next wait: the same clean stop, reported by rcl as an invalid context.
        if node.context.ok():
            raise
    finally:
        # In this order: worker, executor, node, context (rclpy raises in a thread that
        # still spins when the context goes first).
        release()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
