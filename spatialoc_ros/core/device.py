"""The torch device of a run or a localizer, from ``auto`` / ``cpu`` / ``cuda``."""
from __future__ import annotations

import torch

from ..errors import SpatialocError


def pick_device(name) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an error."""
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise SpatialocError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpatialocError("--device cuda: no CUDA device is available")
    return torch.device(name)
