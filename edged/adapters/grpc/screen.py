"""A large ModelInferRequest screened on the wire, before protobuf parses it.

Why: the protobuf parser (upb, in C) holds the GIL for the whole parse, and its cost grows with
the number of entries in the message, not its bytes: a 6 MB request of 3M empty
``bytes_contents`` entries to an FP32 model takes ~70 ms to parse and is refused afterwards, and
every other request, of every model, waits those 70 ms for the GIL (issue 17's bystander).
Reading the request's structure in Python costs a few microseconds per field and there are few
fields that matter: the top-level ones (model, tensors, raw contents, outputs, parameters), each
input tensor's header, and the first entries of its contents. From them the screen refuses what
the parser's path would refuse anyway, with the same kind of message:

- more than MAX_FIELDS top-level fields, or MAX_TENSOR_FIELDS in one input tensor (limits of
  the screen's own, the only things it refuses that a parse would not: a request is a handful of
  tensors, outputs and parameters, and without them the screen's own work would grow);
- an input tensor with an unknown datatype or a shape check_shape refuses;
- contents in a field other than the datatype's (bytes_contents for an FP32 tensor), or
  contents for a datatype that only travels raw (FP16, BF16);
- contents too long for the elements the shape declares (a number takes at most 12 bytes on
  the wire, so an FP32 tensor of 100 elements in 6 MB holds more than its shape says), and
  BYTES contents with more entries than the shape's elements (counted only when their bytes
  allow many more entries than elements, and only up to one more than the count);
- when the model is resident, an input tensor the model lacks, or a datatype or shape it does
  not accept (serving.inference.check_declared, the parsed path's own check).

What the screen cannot decide it leaves to the parser, which stays the reference: a malformed
message returns here unscreened and the parser names its fault. Only requests of SCREEN_BYTES or
more are screened; below that a parse costs well under a millisecond.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from edged.adapters.grpc.convert import (
    check_shape,
    contents_field,
    dtype_of,
    wrong_contents,
)
from edged.errors import InvalidInputError
from edged.formats.layout import MalformedError
from edged.formats.protowire import ProtoWire
from edged.serving.inference import check_declared
from edged.tensors import TensorSpec, short_shape

SCREEN_BYTES = 64 << 10
# Top-level fields of one request: every tensor, raw entry, requested output and parameter is
# one; no model takes thousands of tensors.
MAX_FIELDS = 4096
# Fields of one input tensor read (name, datatype, shape, parameters, contents): a tensor with
# more is left to the parser.
MAX_TENSOR_FIELDS = 256
# Entries of a tensor's contents read to see which fields it uses.
CONTENTS_ENTRIES_READ = 64
# BYTES contents this large, with room for many more entries than elements, have their entries
# counted (in Python, which lets other threads run; under it a parse costs ~10 ms at most).
WALK_BYTES = 1 << 20
# At most this many bytes per element in numeric contents: a 10-byte varint, its tag, and a
# chunk header shared by at least one element.
MAX_NUMBER_BYTES = 12

_FIELD_NAMES = {
    1: "bool_contents",
    2: "int_contents",
    3: "int64_contents",
    4: "uint_contents",
    5: "uint64_contents",
    6: "fp32_contents",
    7: "fp64_contents",
    8: "bytes_contents",
}

SignatureOf = Callable[[str, str], Sequence[TensorSpec] | None]
# name, datatype, shape, the spans of its contents (a message field sent twice is merged)
_Tensor = tuple[str, str, tuple[int, ...], list[tuple[int, int]]]


class ScreenedOutError(InvalidInputError):
    """A request the screen refused; ``model``: the model it names (for its statistics and an
    in-band stream error, which name it as a parsed request's would)."""

    def __init__(self, message: str, model: str) -> None:
        super().__init__(message)
        self.model = model


def screen(body: bytes, signature_of: SignatureOf) -> None:
    """Raise InvalidInputError for what the parsed path would refuse; return when the request
    may be parsed. ``signature_of(model, version)``: the resident model's input tensors, or None
    when the screen should not judge them (not resident, another version asked). Bytes that are
    not a well-formed message are left to the parser, which names the fault."""
    wire = ProtoWire(body)
    model = ""
    try:
        model, version, tensors = _top_level(wire, len(body))
        _check(wire, model, version, tensors, signature_of)
    except (MalformedError, UnicodeDecodeError):
        return
    except InvalidInputError as refused:
        raise ScreenedOutError(refused.message, model) from None


def _check(
    wire: ProtoWire,
    model: str,
    version: str,
    tensors: list[_Tensor],
    signature_of: SignatureOf,
) -> None:
    declared: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, datatype, shape, contents in tensors:
        dtype_of(name, datatype)
        count = check_shape(name, shape, datatype)
        if contents:
            _check_contents(wire, name, datatype, count, shape, contents)
        declared.setdefault(name, (datatype, shape))
    if len(declared) != len(tensors):
        return  # the same name twice: decode_inputs names it
    specs = signature_of(model, version)
    if specs is not None:
        check_declared(model, specs, declared)


def _top_level(wire: ProtoWire, end: int) -> tuple[str, str, list[_Tensor]]:
    model = version = ""
    tensors: list[_Tensor] = []
    for fields, (number, kind, start, length) in enumerate(wire.fields(0, end), start=1):
        if fields > MAX_FIELDS:
            raise InvalidInputError(
                f"the request has more than {MAX_FIELDS} fields (input tensors, raw contents, "
                "requested outputs and parameters)"
            )
        if kind != 2:
            continue
        if number == 1:
            model = wire.text(start, length)
        elif number == 2:
            version = wire.text(start, length)
        elif number == 5:
            tensors.append(_tensor(wire, start, start + length))
    return model, version, tensors


def _tensor(wire: ProtoWire, start: int, end: int) -> _Tensor:
    name = datatype = ""
    shape: list[int] = []
    contents: list[tuple[int, int]] = []
    for fields, (number, kind, value, length) in enumerate(wire.fields(start, end), start=1):
        if fields > MAX_TENSOR_FIELDS:
            raise InvalidInputError(
                f"input tensor {name!r}: more than {MAX_TENSOR_FIELDS} fields (parameters, "
                "dimensions)"
            )
        if number == 3 and kind == 0:  # one dimension, unpacked
            shape.append(_int64(value))
        elif kind != 2:
            continue
        elif number == 1:
            name = wire.text(value, length)
        elif number == 2:
            datatype = wire.text(value, length)
        elif number == 3:  # packed dimensions; past the limit check_shape refuses anyway
            pos, stop = value, value + length
            while pos < stop and len(shape) <= 64:
                dim, pos = wire.varint(pos, stop)
                shape.append(_int64(dim))
        elif number == 5:
            contents.append((value, value + length))
    return name, datatype, tuple(shape), contents


def _check_contents(
    wire: ProtoWire,
    name: str,
    datatype: str,
    count: int,
    shape: tuple[int, ...],
    spans: list[tuple[int, int]],
) -> None:
    size = sum(end - start for start, end in spans)
    if not size:
        return  # an empty contents message holds nothing (and is allowed beside raw contents)
    field = contents_field(name, datatype)
    for start, end in spans:
        _entries(wire, start, end, name, datatype, field, CONTENTS_ENTRIES_READ)
    if field != "bytes_contents":
        if size > MAX_NUMBER_BYTES * count + 16:
            raise InvalidInputError(
                f"input tensor {name!r}: shape {short_shape(shape)} holds {count} elements, "
                f"contents.{field} has more ({size} bytes)"
            )
    elif size > 16 * count + 64 and size >= WALK_BYTES:
        # Every entry takes 2 bytes or more: bytes this many could hold far more entries than
        # elements, each of which the parser would build. Count them, up to one too many.
        entries = 0
        for start, end in spans:
            entries += _entries(wire, start, end, name, datatype, field, count + 1 - entries)
            if entries > count:
                raise InvalidInputError(
                    f"input tensor {name!r}: shape {short_shape(shape)} holds {count} "
                    f"elements, contents.{field} has more"
                )


def _entries(
    wire: ProtoWire, start: int, end: int, name: str, datatype: str, field: str, most: int
) -> int:
    """How many of the first ``most`` entries in [start, end) there are; each must be of
    ``field``, else wrong_contents."""
    read = 0
    for number, _, _, _ in wire.fields(start, end):
        if read == most:
            break
        sent = _FIELD_NAMES.get(number, f"field {number}")
        if sent != field:
            raise wrong_contents(name, datatype, sent)
        read += 1
    return read


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value
