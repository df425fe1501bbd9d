"""Giving memory back between the stages of a full-size build.

Freed Python/numpy/ONNX Runtime buffers go back to the C allocator, and glibc keeps much of it (fragmented heap
arenas) unless asked to trim; at 1.7B-parameter sizes that is gigabytes of resident memory no later stage uses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim`` (None elsewhere: musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Collect garbage and return the allocator's free memory to the OS where the C library can."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
