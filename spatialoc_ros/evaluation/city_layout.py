"""One frame for a gallery of many scenes: every scene a district of one city.

The benchmark gives every scene (a drive of the test split, a distractor city's
drive) a frame of its own, so an answer in another scene has no error in the
query's frame. A robot's map has one frame: a wrong district is a place some
kilometres away, which a wide enough ellipse can hold and a narrow one cannot.
To measure the published uncertainty as a city map would see it, the scale
benchmark and the probability fit can lay the scenes out side by side:

    scene s (0-based) goes to column s mod C, row s div C of a square grid,
    C = ceil(sqrt(S)), with a pitch of the largest scene's extent plus a margin,

so that no two scenes' cells overlap and the whole gallery spans about
sqrt(S) pitches (nine scenes of the benchmark preset, each under 1.1 km across,
make a city about 3.5 km wide; a hundred thousand cells, about 10 km). The
offsets only move cells: retrieval, the fine stage, the consensus and the
answer's probability do not see positions across scenes.
"""
from __future__ import annotations

import math

import torch

DISTRICT_MARGIN_M = 100.0  # empty ground between two districts' cells
# how the scale benchmark and the probability fit place a gallery's scenes: as districts of one
# frame, or each in a frame of its own (the benchmark's; another scene's answer has no error)
FRAMES = ("city", "separate")


def check_frames(frames: str) -> None:
    """SpatialocError unless ``frames`` is one of :data:`FRAMES`."""
    from ..errors import SpatialocError

    if frames not in FRAMES:
        raise SpatialocError(f"frames {frames!r}: expected one of {', '.join(FRAMES)}")


def district_offsets(origin: torch.Tensor, cell_size: torch.Tensor, scene: torch.Tensor,
                     margin_m: float = DISTRICT_MARGIN_M) -> torch.Tensor:
    """Offsets [S, 2] (m) that move each scene's cells into its district of one frame.

    origin [R, 2] float64 (the cells' corners in their scene's frame), cell_size [R],
    scene [R] scene ids 0..S-1. A position p in scene s is p + offsets[s] in the city.
    """
    origin, size = origin.double(), cell_size.double()
    count = int(scene.max()) + 1 if len(scene) else 0
    index = scene.long()[:, None].expand(-1, 2)
    low = torch.full((count, 2), math.inf, dtype=torch.float64).scatter_reduce(
        0, index, origin, "amin")
    high = torch.full((count, 2), -math.inf, dtype=torch.float64).scatter_reduce(
        0, index, origin + size[:, None], "amax")
    present = torch.isfinite(low).all(1)
    low = torch.where(present[:, None], low, torch.zeros_like(low))
    high = torch.where(present[:, None], high, torch.zeros_like(high))
    pitch = float((high - low).max()) + margin_m if count else 0.0
    columns = max(1, math.ceil(math.sqrt(count)))
    ids = torch.arange(count)
    corner = torch.stack([ids % columns, ids // columns], 1).double() * pitch
    return corner - low
