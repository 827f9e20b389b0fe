"""The gRPC server: inference, portfolio, health and reflection on a unix socket and TCP."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from edged.adapters.grpc import health, reflection
from edged.adapters.grpc.access import Access
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
    """The serving listeners (unix socket and TCP, roles per server.socket_roles, tcp_roles and
    client certificates) and the admin socket (every role), each its own gRPC server: a call's
    roles follow the server it came in on (edged/adapters/grpc/access.py says why)."""

    def __init__(self, config: ServerSettings, serving: Serving) -> None:
        self.config = config
        self.health = HealthServicer()
        serving_access = Access(
            unix=frozenset(config.socket_roles),
            tcp=frozenset(config.tcp_roles),
            clients={name: frozenset(roles) for name, roles in config.client_roles.items()},
        )
        self.server, self.inference = self._build(serving, serving_access)
        self.admin: grpc.aio.Server | None = None
        self._admin_inference: InferenceServicer | None = None
        if config.admin_socket:
            self.admin, self._admin_inference = self._build(serving, Access.admin())
        self.tcp_port: int | None = None

    def _build(self, serving: Serving, access: Access) -> tuple[grpc.aio.Server, InferenceServicer]:
        limit = self.config.max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ]
        )
        inference = InferenceServicer(serving, access)
        add_inference_service(inference, server)
        portfolio_pb2_grpc.add_PortfolioServicer_to_server(
            PortfolioServicer(serving, access), server
        )
        if serving.lifecycle is not None:
            lifecycle_pb2_grpc.add_LifecycleServicer_to_server(
                LifecycleServicer(serving.lifecycle, access), server
            )
        if serving.quality is not None:
            quality_pb2_grpc.add_QualityServicer_to_server(QualityServicer(serving.quality), server)
        if serving.updates is not None:
            updates_pb2_grpc.add_UpdatesServicer_to_server(
                UpdatesServicer(serving.updates, access), server
            )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable((*SERVICES, health.SERVICE_NAME), server)
        return server, inference

    async def start(self) -> None:
        sock, admin = self.config.unix_socket, self.config.admin_socket
        for path in (sock, admin):
            if path:
                _prepare_socket_path(Path(path))
        if sock:
            self.server.add_insecure_port(f"unix:{sock}")
        if self.config.tcp:
            credentials = tls_credentials(self.config)
            try:
                if credentials is None:
                    port = self.server.add_insecure_port(self.config.tcp)
                else:
                    port = self.server.add_secure_port(self.config.tcp, credentials)
            except RuntimeError:
                port = 0
            if port == 0:
                raise ConfigError(
                    f"server.tcp: cannot listen on {self.config.tcp} (in use by another "
                    "process, or not an address of this machine)"
                )
            self.tcp_port = port
        if self.admin is not None:
            self.admin.add_insecure_port(f"unix:{admin}")
        # Sockets are created owner-only, then opened to their group: no instant in which
        # anyone else may connect.
        previous = os.umask(0o177)
        try:
            await self.server.start()
            if self.admin is not None:
                await self.admin.start()
        finally:
            os.umask(previous)
        if sock:
            _grant(Path(sock), self.config.socket_group, "socket_group", always_group=True)
        if admin:
            _grant(Path(admin), self.config.admin_group, "admin_group", always_group=False)
        log.info(
            "listening on %s",
            ", ".join(
                x
                for x in (
                    f"unix:{sock}" if sock else "",
                    self.bound_tcp or "",
                    f"unix:{admin} (admin)" if admin else "",
                )
                if x
            ),
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
        servers = [self.server] + ([self.admin] if self.admin is not None else [])
        await asyncio.gather(*(server.stop(grace) for server in servers))
        self.inference.regions.close()
        if self._admin_inference is not None:
            self._admin_inference.regions.close()
        for path in (self.config.unix_socket, self.config.admin_socket):
            if path:
                with contextlib.suppress(FileNotFoundError):
                    Path(path).unlink()


def _prepare_socket_path(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket from a killed run
    except OSError as e:
        raise ConfigError(
            f"server: cannot create the socket {path}: {e.strerror} ({e.filename})"
        ) from None


def _grant(path: Path, group: str, key: str, always_group: bool) -> None:
    """The socket's final mode: 0660 with ``group`` (or, for the serving socket, its current
    group), else owner only."""
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"server.{key}: no group {group!r} on this system") from None
        try:
            os.chown(path, -1, gid)
        except PermissionError:
            raise ConfigError(
                f"server.{key}: the daemon (uid {os.geteuid()}) may not give {path} to group "
                f"{group!r}; add the daemon's user to it or run the unit as documented"
            ) from None
    os.chmod(path, 0o660 if (group or always_group) else 0o600)


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
    """The generated registration, except that ModelInfer takes and returns bytes (it parses
    only what it must, edged/grpc/wire.py) and ModelStreamInfer takes bytes."""
    captured = _Captured()
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, captured)
    handlers = dict(captured.handlers)
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(servicer.ModelInfer)
    # Stream requests arrive as bytes too: a large one is screened and parsed off the loop.
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        servicer.ModelStreamInfer,
        response_serializer=inference_pb2.ModelStreamInferResponse.SerializeToString,
    )
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
