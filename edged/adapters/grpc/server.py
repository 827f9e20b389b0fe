"""The gRPC server: inference, portfolio, health and reflection on a unix socket and TCP."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from edged.adapters.grpc import health, reflection
from edged.adapters.grpc.health import HealthServicer
from edged.adapters.grpc.inference import InferenceServicer
from edged.adapters.grpc.lifecycle_service import LifecycleServicer
from edged.adapters.grpc.portfolio_service import PortfolioServicer
from edged.adapters.grpc.quality_service import QualityServicer
from edged.adapters.grpc.updates_service import UpdatesServicer
from edged.api import (
    health_pb2,
    health_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    lifecycle_pb2,
    lifecycle_pb2_grpc,
    portfolio_pb2,
    portfolio_pb2_grpc,
    quality_pb2,
    quality_pb2_grpc,
    updates_pb2,
    updates_pb2_grpc,
)
from edged.errors import ConfigError
from edged.serving import Serving
from edged.settings import ServerSettings

log = logging.getLogger(__name__)

SERVICES = (
    inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    portfolio_pb2.DESCRIPTOR.services_by_name["Portfolio"].full_name,
    updates_pb2.DESCRIPTOR.services_by_name["Updates"].full_name,
    lifecycle_pb2.DESCRIPTOR.services_by_name["Lifecycle"].full_name,
    quality_pb2.DESCRIPTOR.services_by_name["Quality"].full_name,
)


class GrpcServer:
    def __init__(self, config: ServerSettings, serving: Serving) -> None:
        self.config = config
        limit = config.max_message_bytes
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ]
        )
        self.inference = InferenceServicer(serving)
        add_inference_service(self.inference, self.server)
        portfolio_pb2_grpc.add_PortfolioServicer_to_server(PortfolioServicer(serving), self.server)
        if serving.lifecycle is not None:
            lifecycle_pb2_grpc.add_LifecycleServicer_to_server(
                LifecycleServicer(serving.lifecycle), self.server
            )
        if serving.quality is not None:
            quality_pb2_grpc.add_QualityServicer_to_server(
                QualityServicer(serving.quality), self.server
            )
        if serving.updates is not None:
            updates_pb2_grpc.add_UpdatesServicer_to_server(
                UpdatesServicer(serving.updates), self.server
            )
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable((*SERVICES, health.SERVICE_NAME), self.server)
        self.tcp_port: int | None = None

    async def start(self) -> None:
        sock = self.config.unix_socket
        if sock:
            path = Path(sock)
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a stale socket from a killed run
            self.server.add_insecure_port(f"unix:{path}")
        if self.config.tcp:
            credentials = tls_credentials(self.config)
            if credentials is None:
                port = self.server.add_insecure_port(self.config.tcp)
            else:
                port = self.server.add_secure_port(self.config.tcp, credentials)
            if port == 0:
                raise ConfigError(f"server.tcp: cannot listen on {self.config.tcp}")
            self.tcp_port = port
        await self.server.start()
        if sock:
            os.chmod(sock, 0o660)
        log.info(
            "listening on %s",
            ", ".join(x for x in (f"unix:{sock}" if sock else "", self.bound_tcp or "") if x),
        )

    @property
    def bound_tcp(self) -> str | None:
        if self.tcp_port is None:
            return None
        host = self.config.tcp.rpartition(":")[0]
        return f"{host}:{self.tcp_port}"

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICES):
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)
        self.inference.regions.close()
        if self.config.unix_socket:
            with contextlib.suppress(FileNotFoundError):
                Path(self.config.unix_socket).unlink()


class _Captured:
    """Stands in for the server to collect the generated method handlers of a service."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.handlers = handlers


def add_inference_service(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """The generated registration, except that ModelInfer takes and returns bytes: it parses
    only what it must (edged/grpc/wire.py)."""
    captured = _Captured()
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, captured)
    handlers = dict(captured.handlers)
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(servicer.ModelInfer)
    service = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    # grpc.aio.Server has this method (grpcio >= 1.62); its type stubs do not yet.
    server.add_registered_method_handlers(service, handlers)  # type: ignore[attr-defined]


def tls_credentials(config: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS for the TCP listener when configured; mutual TLS when a client CA is given."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    try:
        cert, key = config.tls_cert.read_bytes(), config.tls_key.read_bytes()
        client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca else None
    except OSError as e:
        raise ConfigError(f"server.tls_*: cannot read {e.filename}: {e.strerror}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
