"""Object inputs of every cell of a map, with the frozen parts computed once.

The coarse stage sees, per cell, its first ``max_objects`` objects (cell order,
as in the reference code) with four inputs each: the frozen PointNet++ feature
of 256 points sampled with replacement, the mean colour, the centre and the
raw point count. PointNet++ is frozen (spec §2.1, §12 #15), so its features
are computed once per cell and stored in a :class:`CellBank`; points are
sampled with a seed derived from the cell id, so a bank is reproducible
(spec §12 #23). A bank is saved as one safetensors file.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..data.schema import Cell
from ..errors import DataError
from .objects import objects_to_batch


def cell_seed(cell_id: str, seed: int) -> int:
    return zlib.crc32(cell_id.encode()) ^ (seed * 0x9E3779B1 & 0xFFFFFFFF)


@dataclass
class CellBank:
    """Padded object inputs of C cells: [C, N, ...] tensors, N = max objects per cell."""

    ids: List[str]
    point_features: torch.Tensor  # [C, N, F] float32
    colors: torch.Tensor  # [C, N, 3]
    centers: torch.Tensor  # [C, N, 3], cell-normalised
    counts: torch.Tensor  # [C, N] int64
    mask: torch.Tensor  # [C, N] bool

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
        tensors = dict(point_features=self.point_features, colors=self.colors, centers=self.centers,
                       counts=self.counts, mask=self.mask.to(torch.uint8))
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"ids": json.dumps(self.ids)})

    @classmethod
    def load(cls, path) -> "CellBank":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                ids = json.loads(f.metadata()["ids"])
            t = load_file(str(path))
        except Exception as exc:  # corrupt or foreign file
            raise DataError(f"{path}: not a cell bank ({exc})") from None
        return cls(ids, t["point_features"], t["colors"], t["centers"], t["counts"], t["mask"].bool())


def cell_inputs(cell: Cell, max_objects: int, seed: int):
    """Sampled points and per-object inputs of one cell's first ``max_objects`` objects."""
    rng = np.random.default_rng(cell_seed(cell.id, seed))
    objs = cell.objects[:max_objects]
    xyz, rgb = (t.numpy() for t in objects_to_batch(objs, rng=rng))
    colors = np.stack([o.rgb.mean(0) for o in objs]).astype(np.float32)
    centers = np.stack([o.xyz.mean(0) for o in objs]).astype(np.float32)
    counts = np.array([len(o.xyz) for o in objs], dtype=np.int64)
    return xyz, rgb, colors, centers, counts


@torch.inference_mode()
def build_cell_bank(cells: Sequence[Cell], pointnet, max_objects: int = 28, seed: int = 0,
                    batch_objects: int = 1024, progress: bool = True) -> CellBank:
    """Compute the bank of ``cells`` with a frozen ``pointnet`` (``features(xyz, rgb)`` -> [M, F])."""
    from tqdm import tqdm

    pointnet.eval()
    device = next(pointnet.parameters()).device
    c = len(cells)
    width = getattr(pointnet, "feature_dim", 256)
    feats = torch.zeros(c, max_objects, width)
    colors = torch.zeros(c, max_objects, 3)
    centers = torch.zeros(c, max_objects, 3)
    counts = torch.zeros(c, max_objects, dtype=torch.long)
    mask = torch.zeros(c, max_objects, dtype=torch.bool)
    pending_xyz, pending_rgb, pending_slots = [], [], []

    def flush():
        if not pending_xyz:
            return
        xyz = torch.from_numpy(np.concatenate(pending_xyz)).to(device)
        rgb = torch.from_numpy(np.concatenate(pending_rgb)).to(device)
        out = pointnet.features(xyz, rgb).float().cpu()
        rows = torch.tensor([r for r, _ in pending_slots])
        slots = torch.tensor([s for _, s in pending_slots])
        feats[rows, slots] = out
        pending_xyz.clear(), pending_rgb.clear(), pending_slots.clear()

    for i, cell in enumerate(tqdm(cells, desc="cell features", unit="cell", disable=not progress)):
        xyz, rgb, col, cen, cnt = cell_inputs(cell, max_objects, seed)
        k = len(cnt)
        colors[i, :k], centers[i, :k] = torch.from_numpy(col), torch.from_numpy(cen)
        counts[i, :k], mask[i, :k] = torch.from_numpy(cnt), True
        pending_xyz.append(xyz), pending_rgb.append(rgb)
        pending_slots.extend((i, s) for s in range(k))
        if len(pending_slots) >= batch_objects:
            flush()
    flush()
    return CellBank([c.id for c in cells], feats, colors, centers, counts, mask)
