"""Process settings for a compile's numeric work: BLAS threads and glibc's malloc arenas.

Passes alternate ONNX Runtime sessions (their own thread pool) with numpy work, some of it in
worker threads. Two defaults of the libraries underneath cost time and memory there, measured on
2 cores: numpy's BLAS threads fought ORT's for the cores (EfficientNet-Lite0 int8: 14.9 -> 11.6 s
on one BLAS thread), and glibc gives every thread that allocates its own malloc arena, each
keeping the peak its thread freed (the same compile with layer statistics in threads: peak
540 -> 475 MB with one arena).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import threadpool_limits

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


@functools.lru_cache(maxsize=1)
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


@contextmanager
def malloc_arenas(count: int) -> Iterator[None]:
    """Threads started meanwhile share at most `count` malloc arenas (glibc only; elsewhere nothing
    changes). Afterwards glibc's own rule applies again."""
    libc = _glibc()
    if libc is None or not libc.mallopt(M_ARENA_MAX, count):
        yield
        return
    try:
        yield
    finally:
        libc.mallopt(M_ARENA_MAX, 0)  # 0: glibc's default (a number per core)


@contextmanager
def numeric_limits() -> Iterator[None]:
    """One BLAS thread and one malloc arena while passes run (see the module docstring)."""
    with threadpool_limits(limits=1, user_api="blas"), malloc_arenas(1):
        yield
