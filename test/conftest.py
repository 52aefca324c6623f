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


@pytest.fixture
def ros_env_here(ros_env, monkeypatch):
    """The isolation of ``ros_env`` for rclpy running in the test's own process.

    rcl reads it at init.
    """
    for key in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_STATIC_PEERS"):
        monkeypatch.setenv(key, ros_env[key])
    monkeypatch.delenv("ROS_LOCALHOST_ONLY", raising=False)
    return ros_env


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """The `tiny` synthetic benchmark (all 9 scenes, seed 0), generated once per test run."""
    from spatialoc_ros.data.synth import synthesize

    out = tmp_path_factory.mktemp("tiny")
    synthesize("tiny", seed=0, out=out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_weights(tiny_dataset, tmp_path_factory):
    """A complete weights folder (PointNet++, coarse, fine) trained briefly on the tiny benchmark.

    The pipeline, not the accuracy, is under test: an untrained cheap PointNet++,
    one epoch of each stage with small widths; the cache sits inside the folder.
    """
    import torch

    from spatialoc_ros.networks.checkpoint import save_checkpoint
    from spatialoc_ros.networks.coarse import CoarseConfig
    from spatialoc_ros.networks.pointnet import PointNet2
    from spatialoc_ros.networks.ugfl import FineConfig
    from spatialoc_ros.training.coarse_trainer import CoarseTrainConfig, train_coarse
    from spatialoc_ros.training.fine_trainer import FineTrainConfig, train_fine

    out = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    pointnet = PointNet2(max_neighbours=4)
    stem = out / "pointnet_source"
    save_checkpoint(pointnet, stem, {"kind": "pointnet", "architecture": pointnet.config()})
    cache = str(out / "cache")
    train_coarse(CoarseTrainConfig(data=str(tiny_dataset), out=str(out), epochs=1, batch_size=16,
                                   pointnet=str(stem), cache=cache, max_train_queries=96,
                                   model=CoarseConfig(d=32)), progress=False)
    train_fine(FineTrainConfig(data=str(tiny_dataset), out=str(out), epochs=1, batch_size=16,
                               pointnet=str(stem), cache=cache, max_train_queries=96,
                               warmup_epochs=0,
                               model=FineConfig(d=32)), progress=False)
    return out


@pytest.fixture
def copy_store():
    """A function (localizer, folder) -> CellStore holding a copy of the localizer's own cells
    (one scene, "copy"; float16 instance features as every store keeps them)."""
    import torch

    from spatialoc_ros.core.cell_store import CellStore, CellStoreWriter

    def make(loc, folder):
        gallery, bank = loc.coarse.gallery, loc.coarse.bank
        d, own = gallery.descriptors, len(gallery.ids)
        writer = CellStoreWriter(folder, own, d.p_mask.shape[1], d.p_glo.shape[1],
                                 bank.point_features.shape[2], key="copy")
        origin, size, _ = loc.cell_frames()
        writer.append([f"copy/{i}" for i in gallery.ids], "copy", d,
                      bank.batch(torch.arange(own)), size[:own].numpy(), origin[:own].numpy())
        return CellStore(folder)

    return make
