"""Every file the package writes goes through :func:`atomic_write`: a temporary file in the
same folder, then a rename, so a reader (or a crash) never sees half a file.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Callable, Union

PathLike = Union[str, os.PathLike]


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` to fill a temporary file beside ``path``, then rename it to
    ``path``.

    The parent folder is created. On any error the temporary file is removed and
    ``path`` keeps its old contents (or stays absent). Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: PathLike, data: bytes) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def write_text(path: PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, obj, indent=2, **kwargs) -> Path:
    """``obj`` as JSON (with a final newline)."""
    return write_text(path, json.dumps(obj, indent=indent, **kwargs) + "\n")


def save_figure(fig, path: PathLike, **kwargs) -> Path:
    """A matplotlib figure, its format from the suffix of ``path`` (PNG without one)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))
