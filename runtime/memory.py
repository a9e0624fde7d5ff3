"""Giving freed heap memory back to the operating system.

A restore or a flush allocates and frees hundreds of megabytes of numpy and Arrow buffers. glibc keeps freed heap
pages for reuse (its mmap threshold rises after the first large free, so later large arrays come from the heap too),
and Arrow's allocator keeps its own: a shard processor holding a 1M-customer state measured 200 MiB more RSS than
its state needs until those were released. Each shard is its own process, so that retained memory is multiplied by
the shards a task runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

import pyarrow as pa


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None on a C library without it, e.g. musl: nothing to give back that way)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def release_free_memory() -> None:
    """Return the free pages of Arrow's pool and of the C heap to the OS (about 2 ms).

    Called after a restore, whose working memory is many times the state it leaves, and after a flush that found the
    shard caught up (it waits at the tip: a small shard spends most of its life there). Not after every flush: while
    a shard catches up, the next flush needs that memory again, and giving it back each time measured about 1 µs a
    record more in page faults.
    """
    pa.default_memory_pool().release_unused()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
