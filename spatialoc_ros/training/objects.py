"""Objects as PointNet++ input: fixed-size point samples, batches, and a split's object set.

Every object is reduced to exactly ``num_points`` points (256 in the
benchmark) by sampling uniformly *with replacement*, as the original data
loaders do; coordinates stay cell-normalised (see ``networks/pointnet.py``).
Sampling takes a ``rng``: a ``numpy.random.Generator``, an int seed, or
None for seed 0, so that the same call gives the same points.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data.constants import CLASS_NAMES, PAD_LABEL, SPLITS
from ..data.kitti360pose import cells_path, read_cells
from ..data.schema import Object3d
from ..core.object_points import (NUM_POINTS, RngLike, as_rng, objects_to_batch,  # noqa: F401
                                  sample_object)
from ..errors import DataError

CLASS_INDEX = {name: i for i, name in enumerate(CLASS_NAMES)}


@dataclass
class ObjectSet:
    """Labelled objects with their points in one flat store (n objects, T points in all).

    Object i owns points ``offsets[i]:offsets[i + 1]`` of ``xyz`` / ``rgb``.
    """

    xyz: np.ndarray  # float32 [T, 3], cell-normalised
    rgb: np.ndarray  # float32 [T, 3], in [0, 1]
    offsets: np.ndarray  # int64 [n + 1]
    labels: np.ndarray  # int64 [n], indices into CLASS_NAMES
    keys: List[Tuple[str, int, int]]  # (scene, instance_id, point count) per object

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_objects(cls, objects: Sequence[Object3d],
                     keys: Optional[List[Tuple[str, int, int]]] = None) -> "ObjectSet":
        for obj in objects:
            if obj.label not in CLASS_INDEX:
                raise DataError(f"object {obj.id} has label {obj.label!r}, not one of the "
                                f"{len(CLASS_NAMES)} classes")
            if len(obj.xyz) == 0:
                raise DataError(f"object {obj.id} ({obj.label}) has no points")
        counts = np.array([len(o.xyz) for o in objects], np.int64)
        empty = np.empty((0, 3), np.float32)
        return cls(
            xyz=np.concatenate([o.xyz for o in objects]).astype(np.float32) if objects else empty,
            rgb=np.concatenate([o.rgb for o in objects]).astype(np.float32) if objects else empty,
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            labels=np.array([CLASS_INDEX[o.label] for o in objects], np.int64),
            keys=keys if keys is not None else [("", int(o.instance_id), len(o.xyz))
                                                for o in objects],
        )

    def sample(self, indices: Sequence[int], num_points: int = NUM_POINTS, rng: RngLike = None
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Objects ``indices`` -> xyz, rgb float32 [B, P, 3] and labels int64 [B].

        The points are drawn with replacement.
        """
        indices = np.asarray(indices, np.int64)
        start = self.offsets[indices]
        count = self.offsets[indices + 1] - start
        u = as_rng(rng).random((len(indices), num_points))
        idx = start[:, None] + np.minimum((u * count[:, None]).astype(np.int64),
                                          count[:, None] - 1)
        return (torch.from_numpy(self.xyz[idx]), torch.from_numpy(self.rgb[idx]),
                torch.from_numpy(self.labels[indices]))

    @classmethod
    def concat(cls, sets: Sequence["ObjectSet"]) -> "ObjectSet":
        """One set holding the objects of ``sets`` in order."""
        if not sets:
            return cls.from_objects([])
        starts = np.cumsum([0] + [len(s.xyz) for s in sets[:-1]])
        offsets = [[0]] + [s.offsets[1:] + start for s, start in zip(sets, starts)]
        return cls(
            xyz=np.concatenate([s.xyz for s in sets]),
            rgb=np.concatenate([s.rgb for s in sets]),
            offsets=np.concatenate(offsets).astype(np.int64),
            labels=np.concatenate([s.labels for s in sets]),
            keys=[k for s in sets for k in s.keys],
        )

    def class_counts(self) -> np.ndarray:
        """Objects per class, int64 [len(CLASS_NAMES)]."""
        return np.bincount(self.labels, minlength=len(CLASS_NAMES))


def unique_objects(cells, scene: str) -> Tuple[List[Object3d], List[Tuple[str, int, int]]]:
    """The objects of ``cells``, each (scene, instance_id, point count) once, padding left out.

    Neighbouring cells overlap (30 m cells on a 10 m grid), so one object
    appears in up to nine of them; whole instance objects repeat with the same
    point count, while stuff cropped to different cells differs in count and
    is kept once per crop.
    """
    seen, objects, keys = set(), [], []
    for cell in cells:
        for obj in cell.objects:
            if obj.label == PAD_LABEL:
                continue
            key = (scene, int(obj.instance_id), len(obj.xyz))
            if key not in seen:
                seen.add(key)
                objects.append(obj)
                keys.append(key)
    return objects, keys


def gather_objects(data_dir, split: str) -> ObjectSet:
    """Every distinct object of every cell of a split (``train`` / ``val`` / ``test``).

    Scenes are read one at a time and kept only as float32 point stores.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    per_scene = []
    for scene in SPLITS[split]:
        path = cells_path(data_dir, scene)
        if not path.is_file():
            raise DataError(f"{path}: file not found (scene {scene} of split {split} is not in "
                            f"{Path(data_dir)})")
        per_scene.append(ObjectSet.from_objects(*unique_objects(read_cells(path), scene)))
    return ObjectSet.concat(per_scene)
