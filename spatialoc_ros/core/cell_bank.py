"""Object inputs of every cell of a map, with the frozen parts computed once.

The coarse stage sees, per cell, its first ``max_objects`` objects (cell order,
as in the reference code) with four inputs each: the frozen PointNet++ feature
of 256 points sampled with replacement, the mean colour, the centre and the
raw point count. PointNet++ is frozen, as SpatiaLoc (arXiv 2601.03579) §3.2
says (the reference code's training run fine-tunes it instead), so its
features are computed once per cell and stored in a :class:`CellBank`; points
are sampled with seeds derived from the object or the cell, so a bank is
reproducible (the reference code re-samples at random on every load, even at
evaluation). A bank is saved as one safetensors file.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..data.schema import Cell
from .cache_files import load_tensors, save_tensors
from .map_source import cell_ids
from .object_points import objects_to_batch

log = logging.getLogger(__name__)


def _derived_seed(name: str, seed: int) -> int:
    """A sampling seed for one named thing (a cell, an object) under the run's seed."""
    return zlib.crc32(name.encode()) ^ (seed * 0x9E3779B1 & 0xFFFFFFFF)


def cell_seed(cell_id: str, seed: int) -> int:
    return _derived_seed(cell_id, seed)


@dataclass
class CellBank:
    """Padded object inputs of C cells: [C, N, ...] tensors, N = max objects per cell."""

    ids: List[str]
    point_features: torch.Tensor  # [C, N, F] float32
    colors: torch.Tensor  # [C, N, 3]
    centers: torch.Tensor  # [C, N, 3], cell-normalised
    counts: torch.Tensor  # [C, N] int64
    mask: torch.Tensor  # [C, N] bool
    key: str = ""  # the cache key it was built or loaded under (:func:`.frozen_inputs.bank_key`)

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: Sequence[str]) -> torch.Tensor:
        index = {cid: i for i, cid in enumerate(self.ids)}
        return torch.tensor([index[c] for c in ids], dtype=torch.long)

    def batch(self, rows: torch.Tensor, flip_x=None, flip_y=None) -> dict:
        """Keyword inputs of ``CoarseModel.encode_cells`` for these cells.

        Slots are trimmed to the largest object count in the batch (padding never
        changes a result, so this only saves time). ``flip_x`` / ``flip_y`` [b] bool
        mirror the centres (x -> 1 - x), the training augmentation of the benchmark.
        """
        mask = self.mask[rows]
        n = max(1, int(mask.sum(1).max()))
        centers = self.centers[rows, :n].clone()
        for axis, flip in ((0, flip_x), (1, flip_y)):
            if flip is not None:
                centers[flip, :, axis] = 1.0 - centers[flip, :, axis]
        return dict(point_features=self.point_features[rows, :n], colors=self.colors[rows, :n],
                    centers=centers, counts=self.counts[rows, :n], mask=mask[:, :n])

    def save(self, path) -> None:
        """Write the bank atomically, with a checksum (:mod:`.cache_files`)."""
        tensors = dict(point_features=self.point_features, colors=self.colors,
                       centers=self.centers, counts=self.counts, mask=self.mask.to(torch.uint8))
        save_tensors(path, tensors, {"ids": self.ids})

    @classmethod
    def load(cls, path) -> Optional["CellBank"]:
        """The bank saved at ``path``; None when there is none, or (with a warning) when it is
        damaged."""
        loaded = load_tensors(path, "cell bank")
        if loaded is None:
            return None
        t, meta = loaded
        try:
            return cls(list(meta["ids"]), t["point_features"], t["colors"], t["centers"],
                       t["counts"], t["mask"].bool())
        except KeyError as exc:
            log.warning("%s: not a cell bank (no %s); rebuilding it", path, exc)
            return None


def permute_objects(cells: dict, rng: np.random.Generator) -> dict:
    """``CellBank.batch`` inputs with each row's valid objects in random order (padding stays at
    the end)."""
    mask = cells["mask"]
    n = mask.shape[1]
    order = torch.empty(mask.shape, dtype=torch.long)
    for b, length in enumerate(mask.sum(1).tolist()):
        order[b] = torch.from_numpy(np.concatenate([rng.permutation(length),
                                                    np.arange(length, n)]))
    out = {}
    for key, value in cells.items():
        index = order.to(value.device).view(*order.shape, *([1] * (value.dim() - 2)))
        index = index.expand_as(value)
        out[key] = value.gather(1, index)
    return out


def _object_seed(key, seed: int) -> int:
    return _derived_seed(repr(key), seed)


class _FeatureQueue:
    """Objects waiting for PointNet++; computed in batches, results scattered into ``out``."""

    def __init__(self, compute, batch_objects: int):
        self.compute, self.batch_objects = compute, batch_objects
        self.inputs, self.targets = [], []

    def add(self, inputs, target) -> None:
        self.inputs.append(inputs)
        self.targets.append(target)
        if len(self.inputs) >= self.batch_objects:
            self.flush()

    def flush(self) -> None:
        if self.inputs:
            self.compute(self.inputs, self.targets)
            self.inputs, self.targets = [], []


@torch.inference_mode()
def build_cell_bank(cells: Sequence[Cell], pointnet, max_objects: int = 28, seed: int = 0,
                    batch_objects: int = 512, progress: bool = True) -> CellBank:
    """Compute the bank of ``cells`` with a frozen PointNet2.

    Instance objects (buildings, poles, ...) are stored whole in every cell that
    holds them, so their three set-abstraction stages, which only see offsets
    between points, run once per object on scene coordinates (cell units) and
    only the global stage runs per cell, on centres shifted into that cell.
    Stuff objects are cropped per cell and run whole. Points are sampled with
    seeds derived from the object (instances) or the cell (stuff).
    """
    from tqdm import tqdm

    from ..data.constants import INSTANCE_CLASSES
    from ..networks.pointnet import fold_batchnorm

    net = fold_batchnorm(pointnet)
    device = next(net.parameters()).device
    c = len(cells)
    feats = torch.zeros(c, max_objects, getattr(net, "feature_dim", 256))
    colors = torch.zeros(c, max_objects, 3)
    centers = torch.zeros(c, max_objects, 3)
    counts = torch.zeros(c, max_objects, dtype=torch.long)
    mask = torch.zeros(c, max_objects, dtype=torch.bool)
    local = {}  # instance key -> (features [M, 256], centres [M, 3]) in scene cell units

    def run_local(inputs, keys):
        xyz = torch.from_numpy(np.stack([x for x, _ in inputs])).to(device)
        rgb = torch.from_numpy(np.stack([r for _, r in inputs])).to(device)
        x, pos = net.local_features(xyz, rgb)
        for k, key in enumerate(keys):
            local[key] = (x[k].cpu(), pos[k].cpu())

    def run_whole(inputs, slots):
        xyz = torch.from_numpy(np.stack([x for x, _ in inputs])).to(device)
        rgb = torch.from_numpy(np.stack([r for _, r in inputs])).to(device)
        out = net.features(xyz, rgb).float().cpu()
        for k, (i, j) in enumerate(slots):
            feats[i, j] = out[k]

    def run_global(inputs, slots):
        x = torch.stack([x for x, _ in inputs]).to(device)
        pos = torch.stack([p for _, p in inputs]).to(device)
        out = net.global_features(x, pos).float().cpu()
        for k, (i, j) in enumerate(slots):
            feats[i, j] = out[k]

    # pass 1: per-object inputs; stuff runs whole; each distinct instance runs its local
    # stages once
    instances, whole = (_FeatureQueue(run_local, batch_objects),
                        _FeatureQueue(run_whole, batch_objects))
    shared = []  # (cell row, slot, instance key, cell origin in cell units)
    queued = set()
    for i, cell in enumerate(tqdm(cells, desc="cell features", unit="cell", disable=not progress)):
        objs = cell.objects[:max_objects]
        rng = np.random.default_rng(cell_seed(cell.id, seed))
        origin = cell.bbox_w[:3] / cell.cell_size
        for j, obj in enumerate(objs):
            colors[i, j] = torch.from_numpy(obj.rgb.mean(0).astype(np.float32))
            centers[i, j] = torch.from_numpy(obj.xyz.mean(0).astype(np.float32))
            counts[i, j], mask[i, j] = len(obj.xyz), True
            if obj.label in INSTANCE_CLASSES:
                key = (cell.scene, int(obj.instance_id), obj.label, len(obj.xyz))
                shared.append((i, j, key, origin))
                if key not in queued:
                    queued.add(key)
                    xyz, rgb = (t[0].numpy()
                                for t in objects_to_batch([obj], rng=_object_seed(key, seed)))
                    instances.add(((xyz + origin).astype(np.float32), rgb), key)
            else:
                xyz, rgb = (t[0].numpy() for t in objects_to_batch([obj], rng=rng))
                whole.add((xyz, rgb), (i, j))
    instances.flush()
    whole.flush()
    # pass 2: the global stage of every instance slot, on centres moved into its cell
    per_cell = _FeatureQueue(run_global, 4 * batch_objects)
    for i, j, key, origin in shared:
        x, pos = local[key]
        per_cell.add((x, pos - torch.from_numpy(origin.astype(np.float32))), (i, j))
    per_cell.flush()
    return CellBank(cell_ids(cells), feats, colors, centers, counts, mask)
