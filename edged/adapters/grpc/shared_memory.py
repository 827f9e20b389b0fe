"""Triton's system shared-memory extension: tensors passed by region instead of in the message.

A client creates a POSIX shared-memory object (``tritonclient.utils.shared_memory``), registers a
window of it under a name, and then names that window in a request's input or requested-output
parameters (``shared_memory_region``, ``shared_memory_byte_size``, ``shared_memory_offset``).

Why the bytes are moved with pread/pwrite on the object's descriptor, not through a mapping: the
object belongs to the client, which may truncate it at any instant; touching a mapped page past
the new end kills the daemon with SIGBUS (and faulthandler would then blame the model that was
running). A read or write on the descriptor can only come up short, which is an error for that
request. The copy it costs is one memcpy, against the two protobuf copies and the socket it saves.

Ownership: a region belongs to the peer that registered it — a TCP connection (its address and
port), or the unix socket, whose clients the socket's file mode already vouches for and which
gRPC does not tell apart. Another peer neither sees nor uses it. A region whose object was
unlinked (tritonclient's destroy does that) or whose TCP connection is gone is dropped by the
next sweep; the descriptor is closed once no request is using it.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edged.errors import EdgedError, ErrorCode, InvalidInputError, NotFoundError

SHM_DIR = Path("/dev/shm")
# One peer cannot hold more descriptors than this, nor all peers together more than the total.
REGIONS_PER_PEER = 64
REGIONS_TOTAL = 1024
SWEEP_SECONDS = 5.0
_NAME = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_KEY = re.compile(r"[A-Za-z0-9._\-]{1,200}")
REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"


@dataclass
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    owner: str
    fd: int
    inode: tuple[int, int]
    users: int = 0  # requests reading or writing it now
    closed: bool = False

    def read(self, offset: int, size: int, what: str) -> np.ndarray[Any, np.dtype[np.uint8]]:
        buffer = bytearray(size)  # the tensor's own memory: read once, never copied again
        done = os.preadv(self.fd, [buffer], self.offset + offset) if size else 0
        if done != size:
            raise InvalidInputError(
                f"{what}: shared-memory region {self.name!r} gave {done} of {size} bytes "
                "(its object was truncated)"
            )
        return np.frombuffer(buffer, np.uint8)

    def write(self, offset: int, data: Any, what: str) -> None:
        view = memoryview(data).cast("B")
        size = self.offset + offset + view.nbytes
        if os.fstat(self.fd).st_size < size:
            raise InvalidInputError(
                f"{what}: shared-memory region {self.name!r} no longer holds {view.nbytes} "
                "bytes (its object was truncated)"
            )
        done = 0
        while done < view.nbytes:
            done += os.pwrite(self.fd, view[done:], self.offset + offset + done)


@dataclass(frozen=True)
class Ref:
    """A tensor's window in a region, as a request names it."""

    region: str
    byte_size: int
    offset: int


def tensor_ref(name: str, parameters: Any, what: str) -> Ref | None:
    """The shared-memory window a tensor's parameters name, checked; None when it names none."""
    if REGION not in parameters:
        for key in (BYTE_SIZE, OFFSET):
            if key in parameters:
                raise InvalidInputError(f"{what} {name!r}: {key!r} given without {REGION!r}")
        return None
    region = parameters[REGION]
    if region.WhichOneof("parameter_choice") != "string_param":
        raise InvalidInputError(f"{what} {name!r}: {REGION!r} must be a string parameter")
    if BYTE_SIZE not in parameters:
        raise InvalidInputError(f"{what} {name!r}: {BYTE_SIZE!r} must be given with {REGION!r}")
    size = _int_param(parameters[BYTE_SIZE], BYTE_SIZE, name, what)
    offset = _int_param(parameters[OFFSET], OFFSET, name, what) if OFFSET in parameters else 0
    return Ref(region.string_param, size, offset)


def _int_param(param: Any, key: str, name: str, what: str) -> int:
    kind = param.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise InvalidInputError(f"{what} {name!r}: {key!r} must be an integer parameter")
    value = int(getattr(param, kind))
    if value < 0:
        raise InvalidInputError(f"{what} {name!r}: {key!r} is negative ({value})")
    return value


def object_path(key: str) -> Path:
    """/dev/shm/<key> for a POSIX shared-memory key ("/name" or "name"), validated: one plain
    file name, nothing a path could climb out of."""
    bare = key.lstrip("/")
    if not _KEY.fullmatch(bare) or bare in (".", ".."):
        raise InvalidInputError(
            f"shared-memory key {key[:80]!r}: expected '/name' with letters, digits, '.', '_', '-'"
        )
    return SHM_DIR / bare


@dataclass
class SystemRegions:
    """The registered regions of every peer. Used from the event loop and from worker threads
    (reads and writes of large tensors), hence the lock."""

    regions: dict[tuple[str, str], Region] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _swept: float = 0.0

    def register(self, owner: str, name: str, key: str, offset: int, byte_size: int) -> None:
        if not _NAME.fullmatch(name):
            raise InvalidInputError(
                f"shared-memory region name {name[:80]!r}: expected 1-128 letters, digits, "
                "'.', '_', ':', '-'"
            )
        if byte_size <= 0:
            raise InvalidInputError(f"shared-memory region {name!r}: byte_size must be > 0")
        path = object_path(key)
        self.sweep()
        with self._lock:
            if (owner, name) in self.regions:
                raise EdgedError(
                    f"shared-memory region {name!r} is already registered; unregister it first",
                    ErrorCode.ALREADY_EXISTS,
                )
            mine = sum(1 for o, _ in self.regions if o == owner)
            if mine >= REGIONS_PER_PEER or len(self.regions) >= REGIONS_TOTAL:
                raise EdgedError(
                    f"shared-memory region {name!r}: too many regions registered "
                    f"({mine} by this client, {len(self.regions)} in all; limits "
                    f"{REGIONS_PER_PEER} and {REGIONS_TOTAL})",
                    ErrorCode.RESOURCE_EXHAUSTED,
                )
        fd = _open_object(path, key, name)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidInputError(f"shared-memory key {key!r} is not a shared-memory object")
            if offset + byte_size > info.st_size:
                raise InvalidInputError(
                    f"shared-memory region {name!r}: offset {offset} + byte_size {byte_size} "
                    f"is past the end of {key!r} ({info.st_size} bytes)"
                )
            region = Region(name, key, offset, byte_size, owner, fd, (info.st_dev, info.st_ino))
            with self._lock:
                if (owner, name) in self.regions:
                    raise EdgedError(
                        f"shared-memory region {name!r} is already registered",
                        ErrorCode.ALREADY_EXISTS,
                    )
                self.regions[(owner, name)] = region
        except BaseException:
            os.close(fd)
            raise

    def unregister(self, owner: str, name: str) -> None:
        """One region of the peer's, or all of them for an empty name. An unknown name is not an
        error (as in Triton: clients unregister on their way out)."""
        with self._lock:
            gone = [k for k in self.regions if k[0] == owner and (not name or k[1] == name)]
            regions = [self.regions.pop(k) for k in gone]
        for region in regions:
            self._release(region, closing=True)

    def status(self, owner: str, name: str) -> list[Region]:
        self.sweep()
        with self._lock:
            if name:
                region = self.regions.get((owner, name))
                if region is None:
                    raise NotFoundError(f"no shared-memory region {name!r} is registered")
                return [region]
            return [r for (o, _), r in sorted(self.regions.items()) if o == owner]

    def acquire(self, owner: str, ref: Ref, size: int | None, what: str) -> Region:
        """The region a tensor names, checked against the window it asks for, held until
        ``release``. ``size``: the bytes the tensor must have there exactly (inputs) or None
        (outputs, checked once their size is known)."""
        if time.monotonic() - self._swept > SWEEP_SECONDS:
            self.sweep()
        with self._lock:
            region = self.regions.get((owner, ref.region))
            if region is None:
                raise NotFoundError(
                    f"{what}: no shared-memory region {ref.region!r} is registered by this client"
                )
            if ref.offset + ref.byte_size > region.byte_size:
                raise InvalidInputError(
                    f"{what}: offset {ref.offset} + byte_size {ref.byte_size} is past the end "
                    f"of shared-memory region {ref.region!r} ({region.byte_size} bytes)"
                )
            if size is not None and size != ref.byte_size:
                raise InvalidInputError(
                    f"{what}: its shape and datatype make {size} bytes, but "
                    f"{BYTE_SIZE} says {ref.byte_size}"
                )
            region.users += 1
            return region

    def release(self, region: Region) -> None:
        self._release(region, closing=False)

    def _release(self, region: Region, closing: bool) -> None:
        with self._lock:
            if closing:
                region.closed = True
            else:
                region.users -= 1
            if not (region.closed and region.users == 0 and region.fd >= 0):
                return
            fd, region.fd = region.fd, -1
        os.close(fd)

    def sweep(self) -> None:
        """Drop regions whose client is gone: the object unlinked or replaced, or the TCP
        connection that registered it closed."""
        self._swept = time.monotonic()
        with self._lock:
            regions = list(self.regions.items())
        if not regions:
            return
        connected = _connected_tcp_peers() if any(_tcp_port(o) for (o, _), _ in regions) else None
        for key, region in regions:
            try:
                info = os.stat(object_path(region.key), follow_symlinks=False)
                alive = (info.st_dev, info.st_ino) == region.inode
            except (OSError, InvalidInputError):
                alive = False
            port = _tcp_port(region.owner)
            if alive and port is not None and connected is not None:
                alive = port in connected
            if not alive:
                with self._lock:
                    if self.regions.get(key) is region:
                        del self.regions[key]
                    else:
                        continue
                self._release(region, closing=True)

    def close(self) -> None:
        with self._lock:
            regions = list(self.regions.values())
            self.regions.clear()
        for region in regions:
            self._release(region, closing=True)


def _open_object(path: Path, key: str, name: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(
            f"shared-memory region {name!r}: no shared-memory object {key!r}"
        ) from None
    except PermissionError:
        raise EdgedError(
            f"shared-memory region {name!r}: the daemon (uid {os.geteuid()}) may not open "
            f"{key!r}; create it readable and writable by the daemon's user or group",
            ErrorCode.PERMISSION_DENIED,
        ) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InvalidInputError(f"shared-memory key {key!r} is a symbolic link") from None
        raise InvalidInputError(f"shared-memory key {key!r}: {e.strerror}") from None


def _tcp_port(owner: str) -> int | None:
    """The client's port of a gRPC TCP peer ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000")."""
    if not owner.startswith(("ipv4:", "ipv6:")):
        return None
    port = owner.rpartition(":")[2]
    return int(port) if port.isdigit() else None


def _connected_tcp_peers() -> set[int] | None:
    """The remote ports of this machine's established TCP connections (from /proc), or None
    when they cannot be read (then no region is dropped for want of its connection)."""
    ports: set[int] = set()
    try:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                next(f, None)
                for line in f:
                    # sl local_address rem_address st: the daemon's side of a connection
                    # names the client's port as its remote one.
                    parts = line.split(None, 4)
                    if len(parts) > 3 and parts[3] == "01":  # ESTABLISHED
                        ports.add(int(parts[2].rpartition(":")[2], 16))
    except (OSError, ValueError):
        return None
    return ports


def uses_shared_memory(request: Any) -> bool:
    """Whether a ModelInferRequest names a region for any input or output."""
    return any(REGION in t.parameters for t in request.inputs) or any(
        REGION in o.parameters for o in request.outputs
    )


class RequestRegions:
    """The regions one request reads from and writes to, held from its decoding until its
    outputs are written (an unregister meanwhile closes the descriptor only afterwards)."""

    def __init__(self, regions: SystemRegions, owner: str) -> None:
        self.regions = regions
        self.owner = owner
        self.held: list[Region] = []
        self.outputs: dict[str, tuple[Region, Ref]] = {}

    def _acquire(self, ref: Ref, size: int | None, what: str) -> Region:
        region = self.regions.acquire(self.owner, ref, size, what)
        self.held.append(region)
        return region

    def input_bytes(self, request: Any) -> int:
        total = 0
        for tensor in request.inputs:
            ref = tensor_ref(tensor.name, tensor.parameters, "input tensor")
            total += ref.byte_size if ref is not None else 0
        return total

    def input(
        self, tensor: Any, dtype: np.dtype[Any], shape: tuple[int, ...], count: int
    ) -> Any | None:
        """convert.SharedInput: the tensor read from its region, or None when it is inline."""
        from edged.adapters.grpc import convert  # convert does not import this module

        ref = tensor_ref(tensor.name, tensor.parameters, "input tensor")
        if ref is None:
            return None
        what = f"input tensor {tensor.name!r}"
        if tensor.datatype == "BYTES":
            region = self._acquire(ref, None, what)
            data = region.read(ref.offset, ref.byte_size, what)
            return convert.deserialize_bytes(data.tobytes(), count, tensor.name).reshape(shape)
        region = self._acquire(ref, count * dtype.itemsize, what)
        return region.read(ref.offset, ref.byte_size, what).view(dtype).reshape(shape)

    def claim_outputs(self, request: Any) -> None:
        """Check the requested outputs' regions before the model runs: a bad reference fails
        the request before it costs any inference."""
        for output in request.outputs:
            what = f"requested output {output.name!r}"
            ref = tensor_ref(output.name, output.parameters, what)
            if ref is not None:
                self.outputs[output.name] = (self._acquire(ref, None, what), ref)

    def output_bytes(self) -> int:
        return sum(ref.byte_size for _, ref in self.outputs.values())

    def write_outputs(self, outputs: list[tuple[str, Any]]) -> frozenset[str]:
        """Write the outputs that asked for a region there; the names written."""
        from edged.adapters.grpc import convert

        written = []
        for name, array in outputs:
            claimed = self.outputs.get(name)
            if claimed is None:
                continue
            region, ref = claimed
            _, payload, size = convert.encode_output(array)
            if size > ref.byte_size:
                raise InvalidInputError(
                    f"requested output {name!r}: {BYTE_SIZE} {ref.byte_size} is too small for "
                    f"its {size} bytes"
                )
            region.write(ref.offset, payload, f"requested output {name!r}")
            written.append(name)
        return frozenset(written)

    def close(self) -> None:
        held, self.held = self.held, []
        for region in held:
            self.regions.release(region)
