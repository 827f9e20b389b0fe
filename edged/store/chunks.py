"""Reading a file out in chunks for a consumer that may stop early (a push, a registry upload)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def file_chunks(path: Path, size: int, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of each chunk of ``path`` from ``offset``, ``size`` bytes at most each.

    The file is opened around each read, never held across a yield: grpc and httpx drop a
    request body unfinished when the other side answers early, and a file held by the dropped
    generator would stay open until the collector found it."""
    while True:
        with path.open("rb") as f:
            f.seek(offset)
            chunk = f.read(size)
        if not chunk:
            return
        yield offset, chunk
        offset += len(chunk)
