"""Protobuf wire-format fields read in place: keys and lengths only, whatever a message's size.

Used where decoding a whole message would cost what the caller is trying to avoid: the ONNX
walk (formats/onnx.py: tensor payloads of a multi-GB file through a memory map) and the request
screen (adapters/grpc/screen.py: a large request judged before the protobuf parser, which holds
the GIL, sees it). Malformed bytes raise MalformedError.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

from edged.formats.layout import MalformedError


class ProtoWire:
    """Protobuf wire-format fields over a buffer (a memory map of the file)."""

    def __init__(self, buf: bytes | mmap.mmap) -> None:
        self.buf = buf

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        buf, result, shift = self.buf, 0, 0
        while True:
            if pos >= end:
                raise MalformedError("truncated varint")
            byte = buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result, pos
            shift += 7
            if shift > 63:
                raise MalformedError("varint too long")

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
        """(field number, wire type, value or payload start, payload length) in [start, end)."""
        for field, wire, value, length, _, _ in self.spans(start, end):
            yield field, wire, value, length

    def spans(self, start: int, end: int) -> Iterator[tuple[int, int, int, int, int, int]]:
        """As ``fields``, with where each field begins (its key) and ends."""
        pos = start
        while pos < end:
            begin = pos
            key, pos = self.varint(pos, end)
            field, wire = key >> 3, key & 7
            if field == 0:
                raise MalformedError("field number 0")
            if wire == 0:
                value, pos = self.varint(pos, end)
                yield field, wire, value, 0, begin, pos
            elif wire == 1:
                pos += 8
                yield field, wire, pos - 8, 8, begin, pos
            elif wire == 5:
                pos += 4
                yield field, wire, pos - 4, 4, begin, pos
            elif wire == 2:
                length, pos = self.varint(pos, end)
                if pos + length > end:
                    raise MalformedError("field overruns its message")
                yield field, wire, pos, length, begin, pos + length
                pos += length
            else:
                raise MalformedError(f"unsupported wire type {wire}")
        if pos != end:
            raise MalformedError("field overruns its message")

    def text(self, start: int, length: int) -> str:
        return bytes(self.buf[start : start + length]).decode()
