"""The real servers a fleet rides on, started as plain processes on loopback ports: the CNCF
distribution registry (Debian's ``docker-registry``) and ``mosquitto``. Tests that need them skip,
saying why, when they are not installed (``.ci/run`` installs both)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.daemon import free_port

REGISTRY = shutil.which("docker-registry") or shutil.which("registry")
MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)


def need_servers() -> None:
    missing = [n for n, p in (("docker-registry", REGISTRY), ("mosquitto", MOSQUITTO)) if not p]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not installed (apt-get install docker-registry mosquitto; "
            ".ci/run does): the fleet tests run against the real registry and broker"
        )


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on {port} in {timeout}s")


class Registry:
    """A distribution registry storing under ``root`` (kept across restarts)."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.config = root.parent / f"registry-{self.port}.yml"
        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Registry:
        assert REGISTRY is not None
        with (self.root.parent / f"registry-{self.port}.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [REGISTRY, "serve", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        _wait_port(self.port, self.proc, "docker-registry")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def blob_file(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (to tamper with them, as a bad disk or a
        compromised mirror would)."""
        hex_ = digest.removeprefix("sha256:")
        return self.root / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


class Broker:
    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.config = work / f"mosquitto-{self.port}.conf"
        work.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self.log = work / f"mosquitto-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        assert MOSQUITTO is not None
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        _wait_port(self.port, self.proc, "mosquitto")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
