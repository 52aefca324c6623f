"""Shared pytest fixtures."""
import fcntl
import os
import random
import tempfile
from pathlib import Path

import pytest

# Linux: DDS domain ids 0..101 map to ports outside the ephemeral range.
# 0 is left out so that tests never meet a ROS system running with defaults.
_DOMAIN_IDS = range(1, 102)
_LOCK_DIR = Path(tempfile.gettempdir()) / "spatialoc_ros_test_domains"


@pytest.fixture
def ros_env():
    """Environment for ROS subprocesses of one test, isolated from everything else.

    A DDS domain id that no other test holds (test sessions running side by
    side on this machine included: each id is claimed with a file lock), and
    discovery limited to this host. Returns a copy of os.environ to pass as
    ``env=`` to subprocess; ``int(env["ROS_DOMAIN_ID"])`` is the domain id.
    """
    _LOCK_DIR.mkdir(exist_ok=True)
    ids = list(_DOMAIN_IDS)
    random.shuffle(ids)
    for domain_id in ids:
        lock = open(_LOCK_DIR / f"{domain_id}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        break
    else:
        pytest.fail("every ROS domain id is in use by other tests")

    env = dict(os.environ)
    env.pop("ROS_LOCALHOST_ONLY", None)  # deprecated; conflicts with the range below
    env.update(
        ROS_DOMAIN_ID=str(domain_id),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        ROS_STATIC_PEERS="",
    )
    try:
        yield env
    finally:
        lock.close()  # releases the domain id


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """The `tiny` synthetic benchmark (all 9 scenes, seed 0), generated once per test run."""
    from spatialoc_ros.data.synth import synthesize

    out = tmp_path_factory.mktemp("tiny")
    synthesize("tiny", seed=0, out=out, progress=False)
    return out
