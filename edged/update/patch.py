"""The patch format: create, apply and inspect binary patches between two versions of a file.

A patch is a list of operations, each producing the next stretch of the target:

- COPY      bytes taken unchanged from the base (unchanged tensors, unchanged headers);
- ZSTD      a zstd frame compressed with a window of the base as reference (``--patch-from``);
- XOR/DIFF  a changed float tensor chunk: its bit patterns XORed with (or subtracted from) the
            base chunk's, split into byte planes, then zstd (see transform.py);
- PLANES    a retrained float tensor chunk: its own bytes split into planes, then zstd (the
            base is no help beyond its range; format 2).

Each tensor chunk takes whichever of XOR, DIFF, PLANES and zstd against the base chunk is
smallest, so it is never worse than the generic path on that tensor. The generic path (bytes
outside tensors, files with no known layout) copies every stretch of 1 KiB or more it finds
verbatim in the base, wherever it moved, and codes only the rest with zstd against a window of
the base: an edit that only touches the container costs its changed bytes.

File layout (integers little-endian)::

    b"EDGEPAT1" | u32 header length | header JSON | op table (zstd) | payloads | sha256 trailer

(the trailer is the sha256 of every byte before it).

No operation produces more than ``MAX_OP_BYTES`` of target nor references more than
``MAX_REF_BYTES`` of base, which bounds memory on both sides whatever the model size. Applying
checks the trailer, then the base digest, before writing anything; the output goes to a temp
file whose digest must equal the target's before it is renamed into place.

(Over 400 lines for a reason: creation and application read and write one binary format, and
keeping both beside the format's definition is what keeps them in step; the transforms, the
anchors and the layouts are in their own modules.)
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from backports import zstd

from edged.errors import InvalidInputError, RejectedError
from edged.formats import Q8_0_BLOCK, Layout, Tensor, detect
from edged.store import atomic
from edged.update import transform
from edged.update.anchors import AnchorIndex

MAGIC = b"EDGEPAT1"
FORMAT = 1  # what a patch without PLANES operations is written as (readable by older nodes)
FORMAT_PLANES = 2
FORMATS = (FORMAT, FORMAT_PLANES)
CHUNK = 4 << 20  # target bytes per tensor operation
SEGMENT = 8 << 20  # target bytes per generic operation
WINDOW = 32 << 20  # base bytes one generic operation may reference
ANCHOR_SPACING = 4096
MAX_OP_BYTES = 64 << 20
MAX_REF_BYTES = 64 << 20
MAX_HEADER_BYTES = 1 << 20
MAX_OPS = 1 << 24
DEFAULT_LEVEL = 3
SMALL_CHUNK = 128 << 10
SMALL_CHUNK_LEVEL = 19
# Generic segments at least this long are searched for stretches of the base they contain.
MATCH_SEARCH_MIN = 16 << 10
MIN_MATCH = 1024

COPY, ZSTD, XOR, DIFF, PLANES = 0, 1, 2, 3, 4
_KIND_NAMES = {COPY: "copy", ZSTD: "zstd", XOR: "xor", DIFF: "diff", PLANES: "planes"}
_OP = struct.Struct("<BBxxxxxxQQQQ")  # kind, width, target length, a, b, payload length
_TRAILER = 32
_READ = 1 << 20

Progress = Callable[[int], None]


class PatchError(RejectedError):
    """A patch that cannot be applied."""


@dataclasses.dataclass(frozen=True)
class Op:
    kind: int
    length: int  # target bytes produced
    a: int = 0  # COPY/XOR/DIFF: base offset; ZSTD: reference offset
    b: int = 0  # ZSTD: reference length
    width: int = 1  # XOR/DIFF element width
    payload: int = 0  # payload bytes


@dataclasses.dataclass(frozen=True)
class Header:
    base_sha256: str
    base_size: int
    target_sha256: str
    target_size: int
    layout: str
    ops: tuple[Op, ...]
    payload_start: int
    payload_size: int
    # How the target was coded: per path ("tensor", "generic"), its tensors (or segments),
    # target bytes and payload bytes; and, when no tensor layout could be used, why.
    coded: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    note: str = ""

    def summary(self) -> dict[str, object]:
        by_kind: dict[str, dict[str, int]] = {}
        for op in self.ops:
            entry = by_kind.setdefault(_KIND_NAMES[op.kind], {"ops": 0, "target": 0, "payload": 0})
            entry["ops"] += 1
            entry["target"] += op.length
            entry["payload"] += op.payload
        return {
            "base": {"sha256": self.base_sha256, "size": self.base_size},
            "target": {"sha256": self.target_sha256, "size": self.target_size},
            "layout": self.layout,
            **({"note": self.note} if self.note else {}),
            "coded": self.coded,
            "ops": by_kind,
            "payload_bytes": self.payload_size,
        }

    def describe(self) -> str:
        """One line for a person: the layout, and how much was coded which way."""
        tensor = self.coded.get("tensor", {})
        generic = self.coded.get("generic", {})
        line = (
            f"{self.layout} layout: {tensor.get('bytes', 0)} target bytes in "
            f"{tensor.get('tensors', 0)} tensors coded tensor-aware ({tensor.get('payload', 0)} "
            f"patch bytes), {generic.get('bytes', 0)} coded generically "
            f"({generic.get('payload', 0)} patch bytes)"
        )
        if not self.note:
            return line
        return (
            f"{line}; all of it generically: {self.note} (a file is coded tensor-aware when both "
            "versions are GGUF, safetensors or ONNX of the same kind with tensor payloads of 64 "
            "bytes or more)"
        )


def _stream(
    fd: int,
    offset: int,
    length: int,
    digest: hashlib._Hash,
    out: BinaryIO | None = None,
    progress: Progress | None = None,
) -> int:
    """Hash (and copy to ``out``) ``length`` bytes of ``fd`` from ``offset`` in bounded reads;
    returns how many there were (fewer when the file ends first)."""
    position, end = offset, offset + length
    while position < end:
        chunk = os.pread(fd, min(_READ, end - position), position)
        if not chunk:
            break
        digest.update(chunk)
        if out is not None:
            out.write(chunk)
        if progress:
            progress(len(chunk))
        position += len(chunk)
    return position - offset


def sha256_file(path: Path, progress: Progress | None = None) -> tuple[str, int]:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        size = _stream(f.fileno(), 0, os.fstat(f.fileno()).st_size, digest, progress=progress)
    return digest.hexdigest(), size


# -- create -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _TensorJob:
    target: int
    base: int
    length: int
    width: int
    first: bool = True  # the tensor's first chunk (what counts tensors in the summary)


@dataclasses.dataclass(frozen=True)
class _GenericJob:
    target: int
    length: int
    ref: tuple[int, int] | None  # a fixed base range, or None: find it by anchors


_Job = _TensorJob | _GenericJob
_Result = list[tuple[Op, bytes]]


class _Creator:
    def __init__(self, base: BinaryIO, target: BinaryIO, level: int, segment: int, window: int):
        self.base_fd, self.target_fd = base.fileno(), target.fileno()
        self.base_size = os.fstat(self.base_fd).st_size
        self.level, self.segment, self.window = level, segment, window
        self._index: AnchorIndex | None = None
        self._index_lock = threading.Lock()
        self._base_file = base

    def index(self) -> AnchorIndex:
        # Built once, on first need: only large bases and unmatched regions ask for it.
        with self._index_lock:
            if self._index is None:
                self._index = AnchorIndex.build(self._base_file, ANCHOR_SPACING)
            return self._index

    def jobs(self, base_layout: Layout, target_layout: Layout) -> Iterator[_Job]:
        if base_layout.kind == "raw" or target_layout.kind == "raw":
            yield from self._generic(0, target_layout.size, None)
            return
        matched = match_tensors(base_layout, target_layout)
        base_gap_before = _gaps_before(base_layout)
        position = 0
        for tensor in target_layout.tensors:
            match = matched.get(tensor.name)
            if tensor.offset > position:
                hint = base_gap_before.get(match.name) if match else None
                yield from self._generic(position, tensor.offset - position, hint)
            if match and match.length == tensor.length and match.width == tensor.width:
                yield from self._tensor(tensor, match)
            else:
                ref = (match.offset, match.length) if match else None
                yield from self._generic(tensor.offset, tensor.length, ref)
            position = tensor.end
        if position < target_layout.size:
            tail = base_gap_before.get("")
            yield from self._generic(position, target_layout.size - position, tail)

    def _tensor(self, tensor: Tensor, match: Tensor) -> Iterator[_Job]:
        step = CHUNK - CHUNK % tensor.width
        for start in range(0, tensor.length, step):
            n = min(step, tensor.length - start)
            yield _TensorJob(
                tensor.offset + start, match.offset + start, n, tensor.width, start == 0
            )

    def _generic(self, start: int, length: int, hint: tuple[int, int] | None) -> Iterator[_Job]:
        if hint is not None and hint[1] > self.window:
            hint = None
        if hint is None and self.base_size <= self.window:
            hint = (0, self.base_size)
        for offset in range(0, length, self.segment):
            yield _GenericJob(start + offset, min(self.segment, length - offset), hint)

    def run(self, job: _Job) -> _Result:
        if isinstance(job, _TensorJob):
            return self._run_tensor(job)
        return self._run_generic(job)

    def _run_tensor(self, job: _TensorJob) -> _Result:
        base = os.pread(self.base_fd, job.length, job.base)
        target = os.pread(self.target_fd, job.length, job.target)
        if base == target:
            return [(Op(COPY, job.length, job.base), b"")]
        # Which transform suits the chunk shows at zstd's fastest level already; only the
        # winner gets the entropy-tuned pass, which costs ~4x level 3. A retrained tensor's
        # values owe the old ones little: its own planes may beat any delta.
        trials = []
        for kind, name in ((XOR, transform.XOR), (DIFF, transform.DIFF)):
            planes = transform.forward(name, base, target, job.width)
            trials.append((len(transform.compress(planes, 1)), kind, planes))
        if job.width in (2, 4, 8):
            planes = transform.planes(target, job.width)
            trials.append((len(transform.compress(planes, 1)), PLANES, planes))
        _, kind, planes = min(trials, key=lambda trial: trial[0])
        payload = transform.compress_planes(planes)
        at = 0 if kind == PLANES else job.base  # PLANES reads nothing of the base
        best = (Op(kind, job.length, at, 0, job.width, len(payload)), payload)
        if job.length >= transform.MIN_PREFIX:
            referenced = transform.compress(target, self.level, prefix=base)
            # Small chunks (norms, biases, whole tensors of small models) afford zstd's
            # strongest level, worth a few percent there — when the reference is in the race
            # at all: after a fine-tune the planes win by far and level 19 would be wasted.
            if job.length <= SMALL_CHUNK and len(referenced) < 1.25 * len(payload):
                referenced = transform.compress(target, SMALL_CHUNK_LEVEL, prefix=base)
            if len(referenced) < len(payload):
                op = Op(ZSTD, job.length, job.base, job.length, 1, len(referenced))
                best = (op, referenced)
        return [best]

    def _run_generic(self, job: _GenericJob) -> _Result:
        target = os.pread(self.target_fd, job.length, job.target)
        if job.target + job.length <= self.base_size:
            same_place = os.pread(self.base_fd, job.length, job.target)
            if same_place == target:
                return [(Op(COPY, job.length, job.target), b"")]
        if job.ref is not None:
            ref_off, ref_len = job.ref
        else:
            ref_len = min(self.window, self.base_size)
            ref_off = self.index().window_for(target, job.target, ref_len, ANCHOR_SPACING)
        prefix = os.pread(self.base_fd, ref_len, ref_off) if ref_len else b""
        found = prefix.find(target) if len(target) >= 64 else -1
        if found >= 0:
            return [(Op(COPY, job.length, ref_off + found), b"")]
        if len(prefix) < transform.MIN_PREFIX:
            prefix, ref_off = b"", 0
        stretches = (
            self.index().matches(self.base_fd, target, ANCHOR_SPACING, MIN_MATCH)
            if job.length >= MATCH_SEARCH_MIN and self.base_size >= MIN_MATCH
            else []
        )
        out: _Result = []
        position = 0
        for at, base_at, length in (*stretches, (len(target), 0, 0)):
            if at > position:  # the bytes before this stretch: zstd against the window
                piece = target[position:at]
                payload = transform.compress(piece, self.level, prefix=prefix)
                out.append((Op(ZSTD, len(piece), ref_off, len(prefix), 1, len(payload)), payload))
            if length:
                out.append((Op(COPY, length, base_at), b""))
            position = at + length
        return out


def match_tensors(base: Layout, target: Layout) -> dict[str, Tensor]:
    """For each target tensor, the base tensor it continues: the one with its name, else (an
    exporter renamed tensors, or numbered its nodes differently) the next one in file order
    with the same shape, type and size that no other target tensor took."""
    by_name = {t.name: t for t in base.tensors}
    matched = {t.name: by_name[t.name] for t in target.tensors if t.name in by_name}
    taken = {t.name for t in matched.values()}
    spare: dict[tuple[object, ...], collections.deque[Tensor]] = {}
    for t in base.tensors:
        if t.name not in taken:
            spare.setdefault((t.shape, t.dtype, t.length, t.width), collections.deque()).append(t)
    for t in target.tensors:
        if t.name not in matched:
            queue = spare.get((t.shape, t.dtype, t.length, t.width))
            if queue:
                matched[t.name] = queue.popleft()
    return matched


def _gaps_before(layout: Layout) -> dict[str, tuple[int, int]]:
    """Base byte range before each tensor (keyed by its name) and after the last (key "")."""
    gaps, position = {}, 0
    for tensor in layout.tensors:
        gaps[tensor.name] = (position, tensor.offset - position)
        position = tensor.end
    gaps[""] = (position, layout.size - position)
    return gaps


def create(
    base: Path,
    target: Path,
    out: Path,
    *,
    level: int = DEFAULT_LEVEL,
    segment: int = SEGMENT,
    window: int = WINDOW,
    tensor_aware: bool = True,
    progress: Progress | None = None,
    workers: int | None = None,
) -> Header:
    """Write a patch turning ``base`` into ``target`` to ``out`` atomically; returns its header."""
    if not 0 < segment <= MAX_OP_BYTES or not 0 < window <= MAX_REF_BYTES:
        raise InvalidInputError(f"segment and window must be between 1 and {MAX_OP_BYTES} bytes")
    base_sha, base_size = sha256_file(base)
    target_sha, target_size = sha256_file(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload_tmp = out.with_name(f".{out.name}.payload-{os.getpid()}")
    ops: list[Op] = []
    with base.open("rb") as bf, target.open("rb") as tf, payload_tmp.open("w+b") as pf:
        payload_tmp.unlink()  # anonymous from here on: nothing to clean up after a crash
        base_layout, target_layout = detect(bf, base), detect(tf, target)
        note = _generic_only(base_layout, target_layout, tensor_aware)
        if note:
            base_layout = Layout("raw", base_layout.size, ())
        creator = _Creator(bf, tf, level, segment, window)
        jobs = creator.jobs(base_layout, target_layout)
        coded: dict[str, dict[str, int]] = {}

        def emit(job: _Job, result: _Result) -> None:
            path = "tensor" if isinstance(job, _TensorJob) else "generic"
            entry = coded.setdefault(path, {"tensors": 0, "bytes": 0, "payload": 0})
            entry["tensors"] += isinstance(job, _TensorJob) and job.first
            entry["bytes"] += job.length
            for op, payload in result:
                pf.write(payload)
                entry["payload"] += len(payload)
                _append(ops, op)
                if progress:
                    progress(op.length)

        workers = workers or os.cpu_count() or 1
        if workers == 1 or target_size <= CHUNK:
            # A small file is a few milliseconds of work: handing each job to a thread and
            # back would cost more than it saves.
            for job in jobs:
                emit(job, creator.run(job))
        else:
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                pending: collections.deque[tuple[_Job, concurrent.futures.Future[_Result]]] = (
                    collections.deque()
                )
                for job in jobs:
                    pending.append((job, pool.submit(creator.run, job)))
                    if len(pending) >= 2 * workers:  # bounded memory: a few chunks in flight
                        done, future = pending.popleft()
                        emit(done, future.result())
                while pending:
                    done, future = pending.popleft()
                    emit(done, future.result())
        coded.get("generic", {}).pop("tensors", None)
        header = Header(
            base_sha,
            base_size,
            target_sha,
            target_size,
            target_layout.kind,  # what the file is; the note says when it was not used
            tuple(ops),
            0,
            0,
            coded,
            note,
        )
        return _write(out, header, pf)


def _generic_only(base: Layout, target: Layout, tensor_aware: bool) -> str:
    """Why the whole file goes through the generic path ("" when it does not); short, since it
    is kept in the patch header (``Header.describe`` says it in full)."""
    if not tensor_aware:
        return "tensor-aware coding off"
    for which, layout in (("target", target), ("base", base)):
        if layout.kind == "raw":
            return f"{which}: no tensor layout"
    if base.kind != target.kind:
        return f"base {base.kind}, target {target.kind}"
    return ""


def _append(ops: list[Op], op: Op) -> None:
    """Add ``op``, merging it into the previous COPY when the two are contiguous in the base."""
    if ops and op.kind == COPY:
        last = ops[-1]
        if (
            last.kind == COPY
            and last.a + last.length == op.a
            and last.length + op.length <= MAX_OP_BYTES
        ):
            ops[-1] = dataclasses.replace(last, length=last.length + op.length)
            return
    ops.append(op)


def _write(out: Path, header: Header, payloads: BinaryIO) -> Header:
    """Write the patch file atomically; returns ``header`` with where its payloads are."""
    table = b"".join(_OP.pack(o.kind, o.width, o.length, o.a, o.b, o.payload) for o in header.ops)
    packed_table = transform.compress(table, 19)
    fmt = FORMAT_PLANES if any(op.kind == PLANES for op in header.ops) else FORMAT
    meta = json.dumps(
        {
            "format": fmt,
            "base": {"sha256": header.base_sha256, "size": header.base_size},
            "target": {"sha256": header.target_sha256, "size": header.target_size},
            "layout": header.layout,
            "ops": len(header.ops),
            "op_table_bytes": len(packed_table),
            "coded": header.coded,
            **({"note": header.note} if header.note else {}),
        },
        separators=(",", ":"),
    ).encode()
    head = MAGIC + struct.pack("<I", len(meta)) + meta + packed_table
    payload_size = sum(op.payload for op in header.ops)
    digest = hashlib.sha256(head)
    with atomic.replacing(out) as f:
        f.write(head)
        payloads.flush()
        _stream(payloads.fileno(), 0, payload_size, digest, f)
        f.write(digest.digest())
    return dataclasses.replace(header, payload_start=len(head), payload_size=payload_size)


# -- read ---------------------------------------------------------------------------------------


def read_header(path: Path, *, verify: bool = True) -> Header:
    """Parse and check a patch's header and op table; with ``verify`` also its trailer digest."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise PatchError(f"patch {path} does not exist", "missing") from None
    if size < len(MAGIC) + 4 + _TRAILER:
        raise PatchError(f"{path}: too short to be a patch ({size} bytes)", "truncated")
    with path.open("rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise PatchError(f"{path}: not an edged patch (bad magic)", "format")
        if verify:
            _verify_trailer(f, size, path)
        (meta_len,) = struct.unpack("<I", f.read(4))
        if meta_len > MAX_HEADER_BYTES or 12 + meta_len > size - _TRAILER:
            raise PatchError(f"{path}: header length {meta_len} is out of range", "corrupt")
        try:
            meta = json.loads(f.read(meta_len))
            base, target = meta["base"], meta["target"]
            n_ops, table_len = int(meta["ops"]), int(meta["op_table_bytes"])
            fmt = meta["format"]
            fields = (str(base["sha256"]), int(base["size"]))
            target_fields = (str(target["sha256"]), int(target["size"]))
            layout = str(meta.get("layout", "raw"))
            coded = {
                str(path): {str(k): int(v) for k, v in figures.items()}
                for path, figures in dict(meta.get("coded", {})).items()
            }
            note = str(meta.get("note", ""))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise PatchError(f"{path}: unreadable patch header ({e})", "corrupt") from None
        if fmt not in FORMATS:
            raise PatchError(
                f"{path}: patch format {fmt!r}, this edged reads {FORMATS[0]} to {FORMATS[-1]}",
                "format",
            )
        table_start = 12 + meta_len
        if not 0 <= n_ops <= MAX_OPS or table_start + table_len > size - _TRAILER:
            raise PatchError(f"{path}: op table out of range", "corrupt")
        try:
            table = transform.decompress(f.read(table_len), n_ops * _OP.size)
        except (zstd.ZstdError, ValueError) as e:
            raise PatchError(f"{path}: corrupt op table ({e})", "corrupt") from None
    ops = tuple(
        Op(kind, length, a, b, width, payload)
        for kind, width, length, a, b, payload in _OP.iter_unpack(table)
    )
    payload_start = table_start + table_len
    payload_size = size - _TRAILER - payload_start
    header = Header(*fields, *target_fields, layout, ops, payload_start, payload_size, coded, note)
    _check_ops(header, path, fmt)
    return header


def _verify_trailer(f: BinaryIO, size: int, path: Path) -> None:
    digest = hashlib.sha256()
    _stream(f.fileno(), 0, size - _TRAILER, digest)
    if digest.digest() != os.pread(f.fileno(), _TRAILER, size - _TRAILER):
        raise PatchError(
            f"{path}: patch checksum mismatch (truncated or corrupted in transit)", "corrupt"
        )


_WIDTHS = (1, 2, 4, 8, Q8_0_BLOCK)


def _check_ops(header: Header, path: Path, fmt: int) -> None:
    total, payload = 0, 0
    for i, op in enumerate(header.ops):
        where = f"{path}: op {i}"
        if op.kind not in _KIND_NAMES or (op.kind == PLANES and fmt < FORMAT_PLANES):
            raise PatchError(f"{where}: unknown kind {op.kind}", "corrupt")
        if not 0 < op.length <= MAX_OP_BYTES or op.width not in _WIDTHS:
            raise PatchError(f"{where}: length or width out of range", "corrupt")
        if op.kind in (COPY, XOR, DIFF) and op.a + op.length > header.base_size:
            raise PatchError(f"{where}: reads past the end of the base", "corrupt")
        if op.kind == ZSTD and (
            op.b > MAX_REF_BYTES
            or op.a + op.b > header.base_size
            or 0 < op.b < transform.MIN_PREFIX
        ):
            raise PatchError(f"{where}: reference out of range", "corrupt")
        if op.kind in (XOR, DIFF, PLANES) and op.length % op.width:
            raise PatchError(f"{where}: length not a multiple of the element width", "corrupt")
        if (op.kind == COPY) != (op.payload == 0):
            raise PatchError(f"{where}: payload length inconsistent with kind", "corrupt")
        total += op.length
        payload += op.payload
    if total != header.target_size:
        raise PatchError(
            f"{path}: ops produce {total} bytes, target is {header.target_size}", "corrupt"
        )
    if payload != header.payload_size:
        raise PatchError(
            f"{path}: ops need {payload} payload bytes, patch holds {header.payload_size}",
            "corrupt",
        )


# -- apply --------------------------------------------------------------------------------------


def check_base(header: Header, base: Path, progress: Progress | None = None) -> None:
    """Refuse a base the patch was not made for (by size first, then digest)."""
    try:
        size = base.stat().st_size
    except FileNotFoundError:
        raise PatchError(f"base {base} does not exist", "wrong_base") from None
    if size != header.base_size:
        raise PatchError(
            f"wrong base: the patch needs a {header.base_size}-byte base "
            f"(sha256 {header.base_sha256[:16]}...), {base} has {size} bytes",
            "wrong_base",
        )
    digest, _ = sha256_file(base, progress)
    if digest != header.base_sha256:
        raise PatchError(
            f"wrong base: the patch needs sha256 {header.base_sha256}, {base} is {digest}",
            "wrong_base",
        )


def apply_to(
    header: Header, base: Path, patch: Path, out: BinaryIO, progress: Progress | None = None
) -> str:
    """Write the target to ``out`` (an open file) and return its sha256; raises PatchError when
    the result is not exactly the target. The caller checked the base (``check_base``)."""
    digest = hashlib.sha256()
    payload_at = header.payload_start
    with base.open("rb") as bf, patch.open("rb") as pf:
        base_fd, patch_fd = bf.fileno(), pf.fileno()
        for i, op in enumerate(header.ops):
            payload = os.pread(patch_fd, op.payload, payload_at) if op.payload else b""
            payload_at += op.payload
            try:
                if op.kind == COPY:
                    if _stream(base_fd, op.a, op.length, digest, out) != op.length:
                        raise PatchError("base ended early while copying", "wrong_base")
                    if progress:
                        progress(op.length)
                    continue
                data: bytes | memoryview
                if op.kind == ZSTD:
                    prefix = os.pread(base_fd, op.b, op.a) if op.b else b""
                    data = transform.decompress(payload, op.length, prefix)
                elif op.kind == PLANES:
                    planes = transform.decompress(payload, op.length)
                    data = transform.from_planes(planes, op.width, op.length)
                else:
                    base_chunk = os.pread(base_fd, op.length, op.a)
                    # inverse() checks the planes' size against the base chunk.
                    limit = transform.planes_limit(op.length, op.width)
                    planes = transform.decompress(payload, limit, exact=False)
                    name = transform.XOR if op.kind == XOR else transform.DIFF
                    data = transform.inverse(name, base_chunk, planes, op.width)
            except (zstd.ZstdError, ValueError) as e:
                raise PatchError(f"{patch}: op {i} does not decode ({e})", "corrupt") from None
            out.write(data)
            digest.update(data)
            if progress:
                progress(op.length)
    result = digest.hexdigest()
    if result != header.target_sha256:
        raise PatchError(
            f"{patch}: result hashes to {result}, the patch promised {header.target_sha256}",
            "digest_mismatch",
        )
    return result


def apply(
    base: Path,
    patch: Path,
    out: Path,
    *,
    progress: Progress | None = None,
) -> Header:
    """Apply ``patch`` to ``base`` and write the verified target to ``out`` atomically."""
    header = read_header(patch)
    check_base(header, base)
    with atomic.replacing(out) as f:
        apply_to(header, base, patch, f, progress)
    return header
