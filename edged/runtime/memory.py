"""Measure what a load costs: RSS delta plus the file pages a variant maps but has not touched.

RSS already counts the file-backed pages a model touched; an mmap'd GGUF can later touch the rest,
so the untouched remainder of its mapping is added to get the bytes it may come to hold.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from edged.runtime.base import LoadStats


def rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def mapped_file_bytes(path: Path, smaps: Path = Path("/proc/self/smaps")) -> tuple[int, int]:
    """(mapped size, resident size) of every mapping of ``path`` in this process.

    smaps has some 25 lines per mapping and a process with runtimes loaded has thousands of
    mappings: the file's own header lines are found with str.find (in C) and only the few lines
    after each are read; a loop over every line held the GIL for ~10 ms at each load."""
    target = str(path.resolve())
    try:
        text = smaps.read_text()
    except OSError:
        return (0, 0)
    size = rss = 0
    needle = f" {target}\n"
    pos = text.find(needle)
    while pos != -1:
        start = text.rfind("\n", 0, pos) + 1
        header = text[start : pos + len(needle) - 1].split(maxsplit=5)
        after = pos + len(needle)
        if len(header) == 6 and header[5] == target and "-" in header[0]:
            # Size: and Rss: are among the first lines of a mapping's block on every kernel.
            for line in text[after : after + 400].split("\n", 6)[:6]:
                if line.startswith("Size:"):
                    size += int(line.split()[1]) * 1024
                elif line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
        pos = text.find(needle, after)
    return size, rss


@contextlib.contextmanager
def measure(path: Path) -> Iterator[LoadStats]:
    """Fill a LoadStats with the time and memory spent inside the block."""
    gc.collect()
    stats = LoadStats()
    before = rss_bytes()
    start = time.perf_counter()
    yield stats
    stats.seconds = time.perf_counter() - start
    stats.rss_delta_bytes = rss_bytes() - before
    size, resident = mapped_file_bytes(path)
    stats.mapped_bytes = max(size - resident, 0)


# glibc's mallopt parameter number for the arena cap (malloc.h: M_ARENA_MAX).
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas before the worker threads start.

    Loads run on pool threads; by default each thread may get its own arena (8 per core), and memory
    freed in one arena is not reused by another, so RSS creeps above what the residency accounting
    holds. Two arenas keep the request path uncontended on a small box and the heap compact.
    """
    if os.uname().sysname == "Linux":
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas)


def trim_heap() -> None:
    """malloc_trim(0): the pages a large request's buffers left free go back to the OS. No
    collection first (that is the caller's business, and costs more than the trim)."""
    if os.uname().sysname == "Linux":
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)


def freeze_startup_objects() -> None:
    """Move every object alive now (modules, classes, protobuf descriptors, the daemon's own
    long-lived parts: ~70,000 of them) out of the cyclic collector's reach. A full collection
    walks every tracked object while holding the GIL: 20-30 ms on a loaded 2-core box, paid at
    each load and unload (measure() and release_freed_memory() collect, so that a load is
    charged its own bytes) and at each automatic oldest-generation collection, and every
    request waited behind it. Frozen objects are still freed by reference counting; only a
    cycle among them would stay, and none of them is meant to die before the daemon does.
    Called once, before the first model loads: variants' runtimes stay collectable."""
    gc.collect()
    gc.freeze()


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise)."""
    gc.collect()
    if os.uname().sysname == "Linux":
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
