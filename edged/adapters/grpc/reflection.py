"""gRPC server reflection (grpc.reflection.v1 and v1alpha) on edged's own stubs, answered from
protobuf's default descriptor pool: grpcurl and Postman list edged's services and call them with
no .proto file at hand. (Why not grpcio-reflection: docs/architecture.md, "Generated code".)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from types import ModuleType
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor

from edged.api import (
    reflection_v1_pb2,
    reflection_v1_pb2_grpc,
    reflection_v1alpha_pb2,
    reflection_v1alpha_pb2_grpc,
)

SERVICE_NAMES = ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection")
NOT_FOUND, INVALID_ARGUMENT = 5, 3  # gRPC status codes, as the protocol's ErrorResponse carries


class _Reflection:
    def __init__(self, pb: ModuleType, services: Sequence[str]) -> None:
        self.pb = pb
        self.services = sorted(services)
        self.pool = descriptor_pool.Default()

    async def ServerReflectionInfo(
        self, requests: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for request in requests:
            yield self.answer(request)

    def answer(self, request: Any) -> Any:
        pb = self.pb
        which = request.WhichOneof("message_request")
        reply = pb.ServerReflectionResponse(valid_host=request.host, original_request=request)
        try:
            if which == "list_services":
                reply.list_services_response.CopyFrom(
                    pb.ListServiceResponse(
                        service=[pb.ServiceResponse(name=n) for n in self.services]
                    )
                )
            elif which == "file_by_filename":
                self._files(reply, self.pool.FindFileByName(request.file_by_filename))
            elif which == "file_containing_symbol":
                self._files(
                    reply, self.pool.FindFileContainingSymbol(request.file_containing_symbol)
                )
            elif which == "file_containing_extension":
                ask = request.file_containing_extension
                message = self.pool.FindMessageTypeByName(ask.containing_type)
                extension = self.pool.FindExtensionByNumber(message, ask.extension_number)
                self._files(reply, self.pool.FindFileContainingSymbol(extension.full_name))
            elif which == "all_extension_numbers_of_type":
                message = self.pool.FindMessageTypeByName(request.all_extension_numbers_of_type)
                reply.all_extension_numbers_response.CopyFrom(
                    pb.ExtensionNumberResponse(
                        base_type_name=message.full_name,
                        extension_number=sorted(
                            e.number for e in self.pool.FindAllExtensions(message)
                        ),
                    )
                )
            else:
                reply.error_response.CopyFrom(
                    pb.ErrorResponse(error_code=INVALID_ARGUMENT, error_message="empty request")
                )
        except KeyError as e:
            reply.error_response.CopyFrom(
                pb.ErrorResponse(error_code=NOT_FOUND, error_message=f"not found: {e}")
            )
        return reply

    def _files(self, reply: Any, file: FileDescriptor) -> None:
        """The file and every file it imports, transitively, each once."""
        seen: dict[str, bytes] = {}
        pending = [file]
        while pending:
            current = pending.pop()
            if current.name in seen:
                continue
            proto = descriptor_pb2.FileDescriptorProto()
            current.CopyToProto(proto)
            seen[current.name] = proto.SerializeToString()
            pending.extend(current.dependencies)
        reply.file_descriptor_response.CopyFrom(
            self.pb.FileDescriptorResponse(file_descriptor_proto=list(seen.values()))
        )


def enable(services: Sequence[str], server: Any) -> None:
    """Serve reflection (both versions of the protocol) for ``services`` on ``server``."""
    names = (*services, *SERVICE_NAMES)
    reflection_v1_pb2_grpc.add_ServerReflectionServicer_to_server(
        _Reflection(reflection_v1_pb2, names), server
    )
    reflection_v1alpha_pb2_grpc.add_ServerReflectionServicer_to_server(
        _Reflection(reflection_v1alpha_pb2, names), server
    )
