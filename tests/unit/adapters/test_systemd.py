"""systemd integration: the notify protocol against a real datagram socket, and the unit file."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from edged.store.store import ModelStore
from tests import ROOT
from tests.daemon import DaemonProcess


def test_daemon_notifies_ready_and_stopping(
    demo_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Path("/tmp") / f"edged-notify-{os.getpid()}.sock"
    path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", "2000000")
        daemon = DaemonProcess(demo_store)
        daemon.start()
        messages = []
        while not any("READY=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        served = len(ModelStore(demo_store).models())
        assert served >= 3
        assert any(f"STATUS=serving {served} models" in m for m in messages)
        assert daemon.stop() == 0
        while not any("STOPPING=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
    path.unlink()
    assert any("WATCHDOG=1" in m for m in messages)


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (apt-get install systemd); .ci/run installs it",
)
def test_unit_file_verifies() -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(ROOT / "systemd" / "edged.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    # verify complains about the absent ExecStart binary on a dev machine; nothing else.
    problems = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and "/opt/edged/.venv/bin/edged" not in line
    ]
    assert problems == [], result.stderr
