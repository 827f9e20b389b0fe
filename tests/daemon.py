"""Start the real daemon as a subprocess on a temporary store, and wait until it serves."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from edged.api import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """A Prometheus text scrape as {series: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll until condition() holds; fail the test naming what never happened."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or condition}")
        time.sleep(0.05)


class DaemonProcess:
    def __init__(self, store: Path, env: dict[str, str] | None = None, **overrides: Any) -> None:
        self.store = store
        self.env = env or {}  # added to the daemon's environment (PYTHONPATH overlays)
        # unix socket paths are limited to 108 bytes: keep them short, out of pytest's tmp dirs.
        self.sock_dir = Path(tempfile.mkdtemp(prefix="edged-", dir="/tmp"))
        self.socket = self.sock_dir / "edged.sock"
        self.admin_socket = self.sock_dir / "admin.sock"
        self.tcp_port = free_port()
        self.config = store.parent / f"edged-{self.tcp_port}.toml"
        sections: dict[str, dict[str, Any]] = {
            "store": {"path": str(store)},
            "server": {
                "unix_socket": str(self.socket),
                "admin_socket": str(self.admin_socket),
                "tcp": f"127.0.0.1:{self.tcp_port}",
            },
            "metrics": {"address": ""},
            "memory": {"budget": "4GiB"},
            # Promotions in tests: short windows (the defaults wait minutes for traffic).
            "lifecycle": {
                "shadow_max_seconds": 3,
                "probation_seconds": 2,
                "probation_requests": 20,
                "gate_min_samples": 10,
            },
        }
        for key, value in overrides.items():
            section, _, name = key.partition("__")
            sections.setdefault(section, {})[name] = value
        lines = []
        for section, values in sections.items():
            lines.append(f"[{section}]")
            for name, value in values.items():
                rendered = (
                    _inline_table(value)
                    if isinstance(value, dict)
                    else f'"{value}"'
                    if isinstance(value, str)
                    else json.dumps(list(value))
                    if isinstance(value, (list, tuple))
                    else str(value).lower()
                    if (isinstance(value, bool))
                    else str(value)
                )
                lines.append(f"{name} = {rendered}")
        self.config.write_text("\n".join(lines) + "\n")
        self.log = store.parent / f"edged-{self.tcp_port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def unix_url(self) -> str:
        return f"unix:{self.socket}"

    @property
    def admin_url(self) -> str:
        """The admin socket: every role (Pin, Load, Activate, Push ...)."""
        return f"unix:{self.admin_socket}"

    @property
    def tcp_url(self) -> str:
        return f"127.0.0.1:{self.tcp_port}"

    def start(self, timeout: float = 120.0) -> DaemonProcess:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edged", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        self.wait_serving(timeout)
        return self

    def wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"edged exited with {self.proc.returncode}:\n{self.logs()}")
            if self.socket.exists():
                try:
                    with grpc.insecure_channel(self.unix_url) as channel:
                        status = (
                            health_pb2_grpc.HealthStub(channel)
                            .Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                            .status
                        )
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
            time.sleep(0.1)
        raise TimeoutError(f"edged did not become ready in {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9: what a power cut, the OOM killer or systemd's stop timeout does."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def crash(self, sig: signal.Signals = signal.SIGSEGV) -> None:
        """The fatal signal a faulting native runtime raises in the daemon (SIGSEGV, SIGABRT)."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        assert self.proc.wait(30) == -sig

    def edged(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the edged CLI against this daemon."""
        return subprocess.run(
            [sys.executable, "-m", "edged", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def _inline_table(value: dict[str, Any]) -> str:
    return "{ " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value.items()) + " }"
