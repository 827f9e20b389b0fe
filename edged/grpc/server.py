"""The gRPC server: inference, portfolio, health and reflection on a unix socket and TCP."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edged.api import inference_pb2, inference_pb2_grpc, portfolio_pb2, portfolio_pb2_grpc
from edged.config import ServerConfig
from edged.errors import ConfigError
from edged.grpc.inference import InferenceServicer
from edged.grpc.portfolio_service import PortfolioServicer
from edged.metrics import Metrics
from edged.portfolio.portfolio import Portfolio

log = logging.getLogger(__name__)

SERVICES = (
    inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    portfolio_pb2.DESCRIPTOR.services_by_name["Portfolio"].full_name,
)


class GrpcServer:
    def __init__(
        self, config: ServerConfig, portfolio: Portfolio, metrics: Metrics, ready: list[bool]
    ) -> None:
        self.config = config
        limit = config.max_message_bytes
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ]
        )
        inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(portfolio, metrics, ready), self.server
        )
        portfolio_pb2_grpc.add_PortfolioServicer_to_server(
            PortfolioServicer(portfolio), self.server
        )
        # grpc_health attaches its asyncio servicer at import time; mypy cannot see it.
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
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
            port = self.server.add_insecure_port(self.config.tcp)
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
        if self.config.unix_socket:
            with contextlib.suppress(FileNotFoundError):
                Path(self.config.unix_socket).unlink()
