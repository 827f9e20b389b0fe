"""Our inference.proto must match Triton's, name for name and number for number."""

from __future__ import annotations

import subprocess
import sys

from google.protobuf import descriptor_pb2
from tritonclient.grpc import service_pb2


def _fields(fd: descriptor_pb2.FileDescriptorProto) -> dict[str, dict[str, tuple]]:  # type: ignore[type-arg]
    out: dict[str, dict[str, tuple]] = {}  # type: ignore[type-arg]

    def walk(message: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        name = prefix + message.name
        out[name] = {
            f.name: (f.number, f.type, f.label, f.type_name.rsplit(".", 1)[-1])
            for f in message.field
        }
        for nested in message.nested_type:
            walk(nested, name + ".")

    for message in fd.message_type:
        walk(message, "")
    return out


def test_inference_proto_matches_triton() -> None:
    # Our stubs are generated from protos/edged/api/inference.proto and checked fresh by
    # `make check-stubs`, so their descriptor is the .proto's. Read in another process: ours
    # and tritonclient's define the same package and cannot share a descriptor pool.
    dump = (
        "import sys; from google.protobuf import descriptor_pb2; "
        "from edged.api import inference_pb2; d = descriptor_pb2.FileDescriptorProto(); "
        "inference_pb2.DESCRIPTOR.CopyToProto(d); sys.stdout.buffer.write(d.SerializeToString())"
    )
    done = subprocess.run([sys.executable, "-c", dump], capture_output=True, check=True)
    ours = descriptor_pb2.FileDescriptorProto.FromString(done.stdout)
    theirs = descriptor_pb2.FileDescriptorProto()
    service_pb2.DESCRIPTOR.CopyToProto(theirs)

    assert ours.package == theirs.package == "inference"
    assert ours.service[0].name == theirs.service[0].name == "GRPCInferenceService"
    their_methods = {m.name: m for m in theirs.service[0].method}
    for method in ours.service[0].method:
        other = their_methods[method.name]
        assert (
            method.input_type,
            method.output_type,
            method.client_streaming,
            method.server_streaming,
        ) == (other.input_type, other.output_type, other.client_streaming, other.server_streaming)
    their_fields = _fields(theirs)
    checked = 0
    for message, fields in _fields(ours).items():
        if message.endswith("Entry"):  # map entries are synthesized
            continue
        for field, spec in fields.items():
            assert their_fields[message][field] == spec, f"{message}.{field}"
            checked += 1
    assert checked > 60
