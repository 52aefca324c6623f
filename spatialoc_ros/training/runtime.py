"""What every training run and every model user shares: the device, torchrun, the run folder,
resuming.

* :class:`Distributed` reads torchrun's environment, shards an epoch's batches by rank and
  wraps a model in DDP when world > 1;
* :func:`start_run` seeds, picks the device and creates the output folder;
* :func:`load_last` / :func:`save_last` keep ``OUT/<stage>_last.pt``, what a resumed run needs
  (written through a temporary file, so an interruption never leaves half a file).

The epoch loop built on these is :func:`.loop.fit`.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from ..atomic import atomic_write
from ..core.device import pick_device


class Distributed:
    """torchrun support: rank / world size from the environment, DDP when world > 1."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = device
        if self.world > 1:
            import torch.distributed as dist

            if device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, batches: list) -> list:
        """This rank's share of an epoch's batches: every world-th one, from its rank on.

        Every rank gets the same number (DDP steps all ranks together), so a remainder
        that only some ranks would get is left out. One process: all of them.
        """
        if self.world == 1:
            return batches
        return batches[self.rank:len(batches) // self.world * self.world:self.world]

    def wrap(self, model):
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def close(self):
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def start_run(seed: int, device: str, out) -> Tuple[np.random.Generator, Distributed, Path]:
    """Seed torch, make the run's numpy generator, pick the device (torchrun-aware), create OUT."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dist = Distributed(pick_device(device))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return rng, dist, out


def copy_pointnet(stem: str, out: Path) -> None:
    """Copy the frozen PointNet++ (stem.safetensors + .json) into OUT: a whole weights folder."""
    for ext in (".safetensors", ".json"):
        src, dst = Path(stem + ext), out / ("pointnet" + ext)
        if not dst.exists() or not dst.samefile(src):
            shutil.copyfile(src, dst)


def load_last(path: Path, model, optimizer, scheduler=None) -> Optional[dict]:
    """Restore model, optimizer (and scheduler) from ``path``; its run state, or None if none."""
    if not path.exists():
        return None
    saved = torch.load(path, weights_only=True, map_location="cpu")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(saved["scheduler"])
    return json.loads(saved["state"])


def save_last(path: Path, model, optimizer, state: dict, scheduler=None) -> None:
    """Write what :func:`load_last` reads, through a temporary file."""
    saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "state": json.dumps(state)}
    if scheduler is not None:
        saved["scheduler"] = scheduler.state_dict()
    atomic_write(path, lambda tmp: torch.save(saved, tmp))
