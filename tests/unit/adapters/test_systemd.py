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
        # A long start asks for more time before it is ready (TimeoutStartSec= would cut it).
        ready = next(i for i, m in enumerate(messages) if "READY=1" in m)
        assert any("EXTEND_TIMEOUT_USEC=" in m for m in messages[:ready]), messages
        served = len(ModelStore(demo_store).models())
        assert served >= 3
        assert any(f"STATUS=serving {served} models" in m for m in messages)
        assert daemon.stop() == 0
        while not any("STOPPING=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
    path.unlink()
    assert any("WATCHDOG=1" in m for m in messages)


def _systemd_version() -> int:
    done = subprocess.run(
        ["systemd-analyze", "--version"], capture_output=True, text=True, check=True
    )
    return int(done.stdout.split()[1])


# What systemd before 253 says of the unit: the reload protocol it does not know yet (the
# drop-in systemd/edged.service.d/systemd-252.conf replaces both).
BEFORE_253 = ("Failed to parse service type, ignoring: notify-reload", "Unknown key 'ReloadSignal'")


def _verify(unit: Path) -> list[str]:
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    # verify complains about the absent ExecStart binary on a dev machine; nothing else.
    return [
        line
        for line in result.stderr.splitlines()
        if line.strip() and "/opt/edged/.venv/bin/edged" not in line
    ]


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (apt-get install systemd); .ci/run installs it",
)
def test_unit_file_verifies(tmp_path: Path) -> None:
    unit = ROOT / "systemd" / "edged.service"
    problems = _verify(unit)
    if _systemd_version() >= 253:
        assert problems == []
        return
    assert all(any(known in p for known in BEFORE_253) for p in problems), problems
    # With the drop-in's settings merged in, systemd 252 takes the unit as it is.
    dropin = (ROOT / "systemd" / "edged.service.d" / "systemd-252.conf").read_text()
    merged = tmp_path / "edged.service"
    text = unit.read_text().replace("Type=notify-reload\n", "").replace("ReloadSignal=SIGHUP\n", "")
    merged.write_text(text + "\n" + dropin)
    assert _verify(merged) == []


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (apt-get install systemd); .ci/run installs it",
)
def test_unit_exposure_stays_low() -> None:
    """The figure docs/security.md quotes: `systemd-analyze security` of the shipped unit."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(ROOT / "systemd" / "edged.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    level = float(result.stdout.split("Overall exposure level for edged.service:")[1].split()[0])
    assert level <= 1.6, result.stdout[-500:]


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None,
    reason="systemd-sysusers not installed (apt-get install systemd); .ci/run installs it",
)
def test_sysusers_makes_the_user_and_the_operators_group(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("passwd", "group", "shadow", "gshadow"):
        (etc / name).touch()
    subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(ROOT / "systemd" / "edged.sysusers")],
        capture_output=True,
        check=True,
    )
    users = {line.split(":")[0]: line for line in (etc / "passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line for line in (etc / "group").read_text().splitlines()}
    assert "edged" in users and users["edged"].endswith("/usr/sbin/nologin")
    assert groups["edged-admin"].split(":")[3] == "edged"  # may hand the admin socket to it
    unit = (ROOT / "systemd" / "edged.service").read_text()
    settings = [line for line in unit.splitlines() if not line.startswith("#")]
    assert "User=edged" in settings and "LimitNICE=+0" in settings
    assert not any(line.startswith("DynamicUser=") for line in settings)
