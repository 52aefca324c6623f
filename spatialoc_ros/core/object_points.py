"""Objects as PointNet++ input: fixed-size point samples of an object, batched.

Every object is reduced to exactly ``num_points`` points (256 in the
benchmark) by sampling uniformly *with replacement*, as the original data
loaders do; coordinates stay cell-normalised (see ``networks/pointnet.py``).
Sampling takes a ``rng``: a ``numpy.random.Generator``, an int seed, or
None for seed 0, so that the same call gives the same points.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
import torch

from ..data.schema import Object3d
from ..errors import DataError

NUM_POINTS = 256

RngLike = Union[np.random.Generator, int, None]


def as_rng(rng: RngLike) -> np.random.Generator:
    """A Generator as is; an int seed or None (= seed 0) made into one."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


def sample_object(obj: Object3d, num_points: int = NUM_POINTS, rng: RngLike = None
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """``num_points`` points of one object, drawn with replacement -> xyz, rgb float32 [P, 3]."""
    if len(obj.xyz) == 0:
        raise DataError(f"object {obj.id} ({obj.label}) has no points")
    idx = as_rng(rng).integers(0, len(obj.xyz), size=num_points)
    return obj.xyz[idx].astype(np.float32), obj.rgb[idx].astype(np.float32)


def objects_to_batch(objects: Sequence[Object3d], num_points: int = NUM_POINTS, rng: RngLike = None
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Point samples of a list of objects -> xyz, rgb float32 tensors [B, P, 3]."""
    rng = as_rng(rng)
    xyz = np.empty((len(objects), num_points, 3), np.float32)
    rgb = np.empty((len(objects), num_points, 3), np.float32)
    for i, obj in enumerate(objects):
        xyz[i], rgb[i] = sample_object(obj, num_points, rng)
    return torch.from_numpy(xyz), torch.from_numpy(rgb)
