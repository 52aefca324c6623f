"""Keep freed memory in the process instead of handing it back to the kernel after every op.

glibc's malloc serves large blocks with ``mmap`` and returns them with ``munmap``
when freed, and trims the heap top once more than a threshold is free. A
forward pass frees and re-allocates tensors of several MB per layer, so every
layer then page-faults its output in again: on a 2-core CPU, building a
gallery spent more time in the kernel (minor page faults, zeroing pages) than
in arithmetic. Raising the mmap threshold to its maximum (32 MB on 64-bit
glibc) and the trim threshold keeps those blocks in the heap for reuse. The
entry points (``spatialoc``, the nodes) call :func:`tune_allocator` once at
start; a library user may call it too. Elsewhere than glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's largest accepted value on 64-bit systems
TRIM_THRESHOLD = 1 << 30

_tuned = False


def tune_allocator() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring); True when set."""
    global _tuned
    if _tuned:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _tuned = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
                  and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _tuned
