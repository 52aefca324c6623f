"""Digests of what a cache was computed from: a file's bytes, a map's cells.

Cache file names carry these digests, so a changed map or new weights can never
reuse features computed from the old ones (a map rewritten under the same cell
ids included).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

_BLOCK = 1 << 20


def file_digest(path, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(Path(path), "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()[:length]


def _array(h, a) -> None:
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.data)


def cells_digest(cells: Sequence, length: int = 16) -> str:
    """A digest of everything the frozen features of ``cells`` are computed from.

    Per cell, in order: id, scene, size, bounding box; per object: id, instance
    id, label and its points and colours. A sequence that carries a
    ``content_digest`` of all that (a built map's cells, keyed by the digest of
    their file) gives it without being read.
    """
    recorded = getattr(cells, "content_digest", None)
    if recorded:
        return str(recorded)[:length]
    h = hashlib.blake2b(digest_size=16)
    for cell in cells:
        h.update(f"cell|{cell.id}|{cell.scene}|{float(cell.cell_size)!r}|"
                 f"{len(cell.objects)}|".encode())
        _array(h, np.asarray(cell.bbox_w, dtype=np.float64))
        for obj in cell.objects:
            h.update(f"obj|{obj.id}|{int(obj.instance_id)}|{obj.label}|".encode())
            _array(h, obj.xyz)
            _array(h, obj.rgb)
    return h.hexdigest()[:length]
