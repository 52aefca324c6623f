"""Cache files: tensors in safetensors with JSON metadata and a checksum of their contents.

A cache is only ever a shortcut, so reading one never fails: a missing file is
``None`` (nothing cached yet), and a truncated, corrupt or foreign file is
``None`` with one warning line, so the caller computes the contents again and
overwrites it. The checksum (BLAKE2b over every tensor's name, dtype, shape and
bytes) catches damage that still parses, so a damaged cache never gives a
wrong answer. Files are written atomically (:func:`~spatialoc_ros.atomic.atomic_write`).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from ..atomic import atomic_write

log = logging.getLogger(__name__)

CHECKSUM_KEY = "checksum"


def tensors_checksum(tensors: Dict[str, torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def save_tensors(path, tensors: Dict[str, torch.Tensor], meta: Dict[str, object]) -> Path:
    """Write ``tensors`` and JSON-able ``meta`` to ``path`` atomically, with their checksum."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {k: json.dumps(v) for k, v in meta.items()}
    header[CHECKSUM_KEY] = tensors_checksum(tensors)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


class CacheDamaged(Exception):
    """A cache file that exists but cannot be trusted (the message says why)."""


def read_tensors(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, object]]:
    """(tensors, meta) saved by :func:`save_tensors`.

    Raises :class:`CacheDamaged` (or OSError if missing).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        checksum = header.pop(CHECKSUM_KEY, None)
        meta = {k: json.loads(v) for k, v in header.items()}
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated, corrupt or not a safetensors file at all
        raise CacheDamaged(" ".join(str(exc).split())[:120] or type(exc).__name__) from None
    if checksum != tensors_checksum(tensors):
        raise CacheDamaged("checksum mismatch")
    return tensors, meta


def load_tensors(path, what: str) -> Optional[Tuple[Dict[str, torch.Tensor], Dict[str, object]]]:
    """(tensors, meta) saved by :func:`save_tensors`; None if missing, None + a warning if
    damaged."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return read_tensors(path)
    except (CacheDamaged, OSError) as why:
        log.warning("%s: damaged %s cache file (%s); rebuilding it", path, what, why)
        return None
