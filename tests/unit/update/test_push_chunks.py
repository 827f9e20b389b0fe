"""The readers that stream update files out (edged push, fleet publish) hold no file open while
they wait for their consumer: grpc and httpx drop them unfinished when the other side answers
early, and a held file would stay open until the collector found it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from edged.fleet import oci
from edged.store.manifest import Transfer
from edged.update.controller import client


def open_paths() -> set[str]:
    fds = Path("/proc/self/fd")
    paths = set()
    for fd in fds.iterdir():
        try:
            paths.add(os.readlink(fd))
        except OSError:
            continue  # the directory listing's own descriptor, closed meanwhile
    return paths


def test_push_chunks_resume_at_the_held_offset_and_hold_no_file(tmp_path: Path) -> None:
    data = os.urandom(client.CHUNK_BYTES * 2 + 123)
    path = tmp_path / "fp32.patch"
    path.write_bytes(data)
    transfer = Transfer(method="patch", sha256="0" * 64, size=len(data))
    files = [client.PushFile("fp32", path, transfer)]

    chunks = client.chunks_of(files, {"fp32": 100}, None)
    first = next(chunks).chunk
    assert (first.variant, first.offset) == ("fp32", 100)
    assert first.data == data[100 : 100 + client.CHUNK_BYTES]
    assert str(path) not in open_paths()  # suspended at a yield, nothing held
    rest = [c.chunk for c in chunks]
    assert b"".join([first.data] + [c.data for c in rest]) == data[100:]
    assert [c.offset for c in rest] == [100 + client.CHUNK_BYTES, 100 + 2 * client.CHUNK_BYTES]


def test_registry_upload_chunks_hold_no_file(tmp_path: Path) -> None:
    data = os.urandom(oci.UPLOAD_CHUNK + 7)
    path = tmp_path / "blob"
    path.write_bytes(data)

    async def read() -> list[bytes]:
        blocks = oci._file_chunks(path)
        first = await anext(blocks)
        assert str(path) not in open_paths()
        return [first] + [b async for b in blocks]

    assert b"".join(asyncio.run(read())) == data
