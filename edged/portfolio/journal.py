"""A crash journal in a memory-mapped file: which variants were loading or running.

Native runtimes can kill the daemon (SIGSEGV in a kernel, abort on a bad tensor). Writes to a
MAP_SHARED mapping land in the page cache at once and survive the death of the process, without
a syscall per request, so the request path can afford to record its in-flight count here. At the
next start, a variant that was loading or had requests in flight is a crash suspect.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import struct
from pathlib import Path

_MAGIC = b"EDGEDJ01"
_HEADER = struct.Struct("<8sI4x")  # magic, clean-shutdown flag
_SLOT = struct.Struct("<72sII")  # key, state, in-flight requests
_INFLIGHT = struct.Struct("<I")
_INFLIGHT_OFFSET = _SLOT.size - _INFLIGHT.size  # the in-flight count is a slot's last field
SLOTS = 512
SIZE = _HEADER.size + SLOTS * _SLOT.size

EMPTY, LOADING, RESIDENT = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Entry:
    key: str
    state: int
    inflight: int

    @property
    def suspect(self) -> bool:
        return self.state == LOADING or self.inflight > 0


class CrashJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size != SIZE:
                os.ftruncate(fd, SIZE)
            self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._slots: dict[str, int] = {}

    def previous_run(self) -> tuple[bool, list[Entry]]:
        """(was the last shutdown clean, entries left by the last run)."""
        magic, clean = _HEADER.unpack_from(self._map, 0)
        if magic != _MAGIC:
            return True, []
        entries = []
        for i in range(SLOTS):
            raw, state, inflight = _SLOT.unpack_from(self._map, _HEADER.size + i * _SLOT.size)
            if state != EMPTY:
                entries.append(Entry(raw.rstrip(b"\0").decode(errors="replace"), state, inflight))
        return bool(clean), entries

    def start(self) -> None:
        """Begin a new run: forget the last one and mark this one as not cleanly stopped."""
        self._map[:] = b"\0" * SIZE
        _HEADER.pack_into(self._map, 0, _MAGIC, 0)
        self._slots.clear()

    def set(self, key: str, state: int, inflight: int = 0) -> None:
        index = self._slots.get(key)
        if index is None:
            used = set(self._slots.values())
            index = next((i for i in range(SLOTS) if i not in used), None)
            if index is None:  # more resident variants than slots: stop recording, never fail
                return
            self._slots[key] = index
        _SLOT.pack_into(
            self._map, _HEADER.size + index * _SLOT.size, key.encode()[:72], state, inflight
        )

    def set_inflight(self, key: str, inflight: int) -> None:
        """The request path's write: only the in-flight count of a resident variant's slot."""
        index = self._slots.get(key)
        if index is None:
            self.set(key, RESIDENT, inflight)
            return
        _INFLIGHT.pack_into(
            self._map, _HEADER.size + index * _SLOT.size + _INFLIGHT_OFFSET, inflight
        )

    def clear(self, key: str) -> None:
        index = self._slots.pop(key, None)
        if index is not None:
            _SLOT.pack_into(self._map, _HEADER.size + index * _SLOT.size, b"", EMPTY, 0)

    def stop_cleanly(self) -> None:
        _HEADER.pack_into(self._map, 0, _MAGIC, 1)
        self._map.flush()

    def close(self) -> None:
        self._map.close()
