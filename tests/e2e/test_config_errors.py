"""What a config can say that only the machine can refuse (a port in use, a socket directory
that cannot be made): `edged serve` exits with one line naming the key, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def _serve(tmp_path: Path, server: str, metrics: str = '""') -> subprocess.CompletedProcess[str]:
    config = tmp_path / "edged.toml"
    store = tmp_path / "store"
    config.write_text(
        f'[store]\npath = "{store}"\n[server]\n{server}\n[metrics]\naddress = {metrics}\n'
    )
    return subprocess.run(
        [sys.executable, "-m", "edged", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _one_clear_line(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("edged: "), done.stderr
    for word in words:
        assert word in last, last


def test_a_grpc_port_in_use(tmp_path: Path, busy_port: int) -> None:
    sockets = f'unix_socket = "{tmp_path}/e.sock"\nadmin_socket = "{tmp_path}/a.sock"'
    done = _serve(tmp_path, f'{sockets}\ntcp = "127.0.0.1:{busy_port}"')
    _one_clear_line(done, "server.tcp", str(busy_port), "in use")


def test_a_metrics_port_in_use(tmp_path: Path, busy_port: int) -> None:
    sockets = f'unix_socket = "{tmp_path}/e.sock"\nadmin_socket = "{tmp_path}/a.sock"'
    done = _serve(tmp_path, f'{sockets}\ntcp = "127.0.0.1:0"', f'"127.0.0.1:{busy_port}"')
    _one_clear_line(done, "metrics.address", "in use")


def test_a_socket_directory_that_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    done = _serve(tmp_path, f'unix_socket = "{tmp_path}/afile/run/e.sock"\nadmin_socket = ""')
    _one_clear_line(done, "socket", "Not a directory")
