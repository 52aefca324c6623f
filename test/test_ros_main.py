"""``spatialoc-localizer``'s entry point: a signal racing the executor still ends with status 0."""
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

from spatialoc_ros.ros.main import EXIT_OK, main

ARGS = ["--ros-args", "-p", "autostart:=false", "-r", "__node:=spatialoc_main_test"]


def test_shutdown_while_the_wait_set_is_built_is_a_clean_stop(ros_env_here, monkeypatch):
    def spin(self):  # what SIGTERM does between the executor's check and its wait
        rclpy.shutdown()
        raise _rclpy.RCLError("failed to initialize wait set: the given context is not valid")

    monkeypatch.setattr(SingleThreadedExecutor, "spin", spin)
    assert main(ARGS) == EXIT_OK
    assert not rclpy.ok()


def test_an_rcl_error_with_the_context_alive_is_not_swallowed(ros_env_here, monkeypatch):
    def spin(self):
        raise _rclpy.RCLError("some other failure")

    monkeypatch.setattr(SingleThreadedExecutor, "spin", spin)
    with pytest.raises(_rclpy.RCLError, match="some other failure"):
        main(ARGS)
    assert not rclpy.ok()  # the context is still shut down on the way out
