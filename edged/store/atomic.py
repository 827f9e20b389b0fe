"""Crash-safe writes: temp file -> fsync -> os.replace -> fsync directory.

This is the only module that calls os.replace: a kill -9 at any instruction leaves either the
old content or the new one under the final name, never a torn file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, final: Path) -> None:
    """Move an fsynced temp file into place and make the rename durable."""
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomically replace ``path`` with ``data``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        commit(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())
