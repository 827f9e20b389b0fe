"""Reversible transforms of a changed tensor against its base, and the zstd calls around them.

Fine-tuning moves most weights by a small relative amount, which changes the low mantissa bits
and leaves sign, exponent and high mantissa alone. Two transforms expose that to zstd:

- XOR of the bit patterns: unchanged high bits become zero bytes;
- the zigzag-coded difference of the bit patterns read as integers: a small move stays a small
  number even when it carries across a byte (XOR would then set every bit below the carry).

Both are split into byte planes (all first bytes, then all second bytes, ...), so the all-zero
high planes compress to almost nothing and the noisy low planes do not disturb them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from backports import zstd

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_INT = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}

XOR, DIFF = "xor", "diff"


# Plane by plane, not numpy's transposed copy: a strided column copy runs at ~3 GB/s here, the
# transpose of an (n, 2) array at ~0.6 GB/s.


def _to_planes(values: np.ndarray[Any, Any], width: int) -> bytes:
    if width == 1:
        return bytes(values.tobytes())
    columns = values.view(np.uint8).reshape(-1, width)
    planes = np.empty((width, len(columns)), dtype=np.uint8)
    for k in range(width):
        planes[k] = columns[:, k]
    return bytes(planes.tobytes())


def _from_planes(data: bytes, width: int) -> np.ndarray[Any, Any]:
    raw = np.frombuffer(data, dtype=np.uint8)
    if width == 1:
        return raw.copy()
    planes = raw.reshape(width, -1)
    columns = np.empty((planes.shape[1], width), dtype=np.uint8)
    for k in range(width):
        columns[:, k] = planes[k]
    return columns.view(_UINT[width]).reshape(-1)


def forward(kind: str, base: bytes, target: bytes, width: int) -> bytes:
    """The plane-split transform of ``target`` against ``base`` (same length, multiple of width)."""
    b = np.frombuffer(base, dtype=_UINT[width])
    t = np.frombuffer(target, dtype=_UINT[width])
    if kind == XOR:
        return _to_planes(b ^ t, width)
    # Wrapping subtraction, then zigzag so that -1 and +1 are both small.
    d = (t - b).view(_INT[width])
    zz = (d << 1) ^ (d >> (8 * width - 1))
    return _to_planes(zz.view(_UINT[width]), width)


def inverse(kind: str, base: bytes, planes: bytes, width: int) -> memoryview:
    """The target bytes from the base bytes and the transform ``forward`` produced (a view of a
    fresh array: written out as is, never copied into a bytes object)."""
    b = np.frombuffer(base, dtype=_UINT[width])
    v = _from_planes(planes, width)  # a fresh array: safe to work in place
    if kind == XOR:
        np.bitwise_xor(v, b, out=v)
        return v.view(np.uint8).data
    sign = v & 1
    np.negative(sign, out=sign)  # 0 or all ones (unsigned wrap-around)
    np.right_shift(v, 1, out=v)
    np.bitwise_xor(v, sign, out=v)  # un-zigzag
    np.add(v, b, out=v)  # wrapping
    return v.view(np.uint8).data


# -- zstd ---------------------------------------------------------------------------------------

_CP = zstd.CompressionParameter
MIN_PREFIX = 8  # zstd refuses shorter raw dictionaries
_DECODER_OPTIONS: dict[int, int] = {zstd.DecompressionParameter.window_log_max: 31}


def compress(data: bytes, level: int, prefix: bytes = b"") -> bytes:
    """One zstd frame with a content checksum; ``prefix`` is referenced like ``--patch-from``."""
    options: dict[Any, int] = {_CP.compression_level: level, _CP.checksum_flag: 1}
    if prefix:
        # The window must reach back over the whole prefix; long-distance matching finds content
        # that moved further than the regular match finder looks.
        span = len(prefix) + len(data)
        options[_CP.window_log] = max(10, min(31, (span - 1).bit_length()))
        options[_CP.enable_long_distance_matching] = 1
    encoder = zstd.ZstdCompressor(options=options, zstd_dict=_reference(prefix))
    return encoder.compress(data, zstd.ZstdCompressor.FLUSH_FRAME)


def _reference(prefix: bytes) -> Any:
    """The base bytes as a raw prefix (ZSTD_CCtx_refPrefix), or None without one."""
    return zstd.ZstdDict(prefix, is_raw=True).as_prefix if prefix else None


def decompress(frame: bytes, expected: int, prefix: bytes = b"") -> bytes:
    """Decode one frame; raises ``zstd.ZstdError`` or ``ValueError`` on anything but ``expected``
    bytes of intact content."""
    decoder = zstd.ZstdDecompressor(zstd_dict=_reference(prefix), options=_DECODER_OPTIONS)
    out = decoder.decompress(frame, max_length=expected + 1)
    if len(out) != expected or not decoder.eof or decoder.unused_data:
        raise ValueError(f"frame decodes to {len(out)} bytes, expected {expected}")
    return out
