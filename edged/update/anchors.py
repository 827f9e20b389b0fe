"""Finding where a target segment's content lives in the base, with memory independent of size.

zstd's reference mode needs the base bytes it may copy from in memory, so a large base is
offered to it one window at a time. Which window? Content-defined anchors: positions where a
hash of the preceding 32 bytes has its top bits zero. The same content gives the same anchors
wherever it sits, so an anchor of the target segment found in the base votes for a base window;
the window holding most votes is the reference. About one anchor per ``spacing`` bytes are kept,
so the index of a 1 GB base is a few MB of numpy arrays.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, BinaryIO

import numpy as np

WIDTH = 32
_MULTIPLIER = 0x9E3779B97F4A7C15
_MIX = 0xBF58476D1CE4E5B9
_MASK64 = (1 << 64) - 1
_BLOCK = 4 << 20


def _window_hashes(data: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """h[i] = polynomial hash of data[i : i + WIDTH], by doubling (five vectorised passes)."""
    h = data.astype(np.uint64)
    width, power = 1, _MULTIPLIER
    while width < WIDTH:
        h = h[:-width] * np.uint64(power) + h[width:]
        power = (power * power) & _MASK64
        width *= 2
    return h


def anchors(data: bytes, spacing: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """(positions, hashes) of the anchors in ``data``; a position is where its window starts."""
    if len(data) < WIDTH:
        return np.empty(0, np.int64), np.empty(0, np.uint64)
    h = _window_hashes(np.frombuffer(data, dtype=np.uint8)) * np.uint64(_MIX)
    bits = max(1, (spacing - 1).bit_length())
    hit = np.flatnonzero((h >> np.uint64(64 - bits)) == 0)
    return hit.astype(np.int64), h[hit]


@dataclasses.dataclass
class AnchorIndex:
    """Anchor hashes of a base file, sorted, each with its first position."""

    hashes: np.ndarray[Any, Any]
    positions: np.ndarray[Any, Any]
    size: int

    @classmethod
    def build(cls, f: BinaryIO, spacing: int) -> AnchorIndex:
        size = os.fstat(f.fileno()).st_size
        all_pos, all_hash = [], []
        offset = 0
        while offset < size:
            # Blocks overlap by WIDTH-1 bytes so that no window is missed at a boundary.
            data = os.pread(f.fileno(), _BLOCK + WIDTH - 1, offset)
            pos, hashes = anchors(data, spacing)
            keep = pos < _BLOCK
            all_pos.append(pos[keep] + offset)
            all_hash.append(hashes[keep])
            offset += _BLOCK
        if not all_pos:
            return cls(np.empty(0, np.uint64), np.empty(0, np.int64), size)
        hashes = np.concatenate(all_hash)
        positions = np.concatenate(all_pos)
        order = np.argsort(hashes, kind="stable")
        hashes, positions = hashes[order], positions[order]
        first = np.ones(len(hashes), dtype=bool)
        first[1:] = hashes[1:] != hashes[:-1]
        return cls(hashes[first], positions[first], size)

    def window_for(self, segment: bytes, segment_start: int, window: int, spacing: int) -> int:
        """Start of the ``window``-byte base range most likely to hold ``segment``'s content."""
        if self.size <= window:
            return 0
        _, hashes = anchors(segment, spacing)
        found = np.searchsorted(self.hashes, hashes)
        found = np.minimum(found, max(len(self.hashes) - 1, 0))
        if len(self.hashes) and len(hashes):
            matched = self.hashes[found] == hashes
        else:
            matched = np.zeros(len(hashes), dtype=bool)
        if not matched.any():
            # Nothing recognised: assume the content stayed roughly where it was.
            return int(
                min(max(segment_start - (window - len(segment)) // 2, 0), self.size - window)
            )
        base_pos = np.sort(self.positions[found[matched]])
        # The window [p, p + window) that holds the most matched anchors, centred on them.
        ends = np.searchsorted(base_pos, base_pos + window - WIDTH, side="right")
        best = int(np.argmax(ends - np.arange(len(base_pos))))
        lo, hi = int(base_pos[best]), int(base_pos[ends[best] - 1]) + WIDTH
        start = (lo + hi - window) // 2
        return int(min(max(start, 0), self.size - window))

    def matches(
        self, base_fd: int, segment: bytes, spacing: int, min_length: int
    ) -> list[tuple[int, int, int]]:
        """Stretches of ``segment`` found verbatim in the base: (offset in the segment, base
        offset, length), in order, non-overlapping, each at least ``min_length`` long.

        Each anchor of the segment that the base also has is a candidate; it is checked against
        the base bytes and extended both ways as far as they agree. An edit that shifts
        everything after it (a longer doc string, a renamed model) then costs the changed bytes,
        not a re-compression of the whole segment against a window."""
        positions, hashes = anchors(segment, spacing)
        if not len(positions) or not len(self.hashes):
            return []
        found = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        hit = self.hashes[found] == hashes
        out: list[tuple[int, int, int]] = []
        covered = 0  # segment bytes before this are in a match already
        data = np.frombuffer(segment, dtype=np.uint8)
        for p, q in zip(positions[hit].tolist(), self.positions[found[hit]].tolist(), strict=True):
            if p < covered:
                continue
            back = _agree_backwards(base_fd, data, p, q, min(p - covered, q))
            ahead = _agree_forwards(base_fd, data, p, q, self.size)
            if back + ahead >= min_length:
                out.append((p - back, q - back, back + ahead))
                covered = p + ahead
        return out


_COMPARE = 1 << 20


def _agree_forwards(fd: int, data: np.ndarray[Any, Any], p: int, q: int, size: int) -> int:
    """How many bytes from data[p] on equal the base's from q on."""
    n = 0
    while p + n < len(data) and q + n < size:
        step = min(_COMPARE, len(data) - p - n, size - q - n)
        base = np.frombuffer(os.pread(fd, step, q + n), dtype=np.uint8)
        if len(base) < step:
            step = len(base)
            if not step:
                break
        differ = np.flatnonzero(base != data[p + n : p + n + step])
        if len(differ):
            return n + int(differ[0])
        n += step
    return n


def _agree_backwards(fd: int, data: np.ndarray[Any, Any], p: int, q: int, limit: int) -> int:
    """How many bytes before data[p] equal those before base[q] (at most ``limit``)."""
    n = 0
    while n < limit:
        step = min(_COMPARE, limit - n)
        base = np.frombuffer(os.pread(fd, step, q - n - step), dtype=np.uint8)
        differ = np.flatnonzero(base != data[p - n - step : p - n])
        if len(differ):
            return n + step - 1 - int(differ[-1])
        n += step
    return n
