"""sd_notify without libsystemd: READY, RELOADING, STOPPING, WATCHDOG and STATUS messages."""

from __future__ import annotations

import os
import socket
import threading
import time


def notify(*lines: str) -> bool:
    """Send ``KEY=VALUE`` lines to systemd; a no-op (False) when not run under Type=notify."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
        except OSError:
            return False
    return True


def reloading() -> bool:
    # Type=notify-reload wants the monotonic time with RELOADING=1.
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")


def watchdog_interval() -> float | None:
    """Half the watchdog timeout systemd set for us, in seconds, or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


class StartExtender:
    """Keeps systemd's start timeout from cutting a long start short (validating new variants
    in subprocesses, loading the portfolio): EXTEND_TIMEOUT_USEC at once and every ``every``
    seconds, each asking for ``by`` more, until ``stop`` (READY=1). A thread, so that it speaks
    even while start-up blocks the event loop; TimeoutStartSec= then only bounds a start that
    stopped making progress for ``by`` seconds."""

    def __init__(self, every: float = 10.0, by: float = 30.0) -> None:
        self.every, self.by = every, by
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not os.environ.get("NOTIFY_SOCKET"):
            return
        self._thread = threading.Thread(target=self._run, name="edged-start-extender", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            notify(f"EXTEND_TIMEOUT_USEC={int(self.by * 1e6)}")
            if self._stop.wait(self.every):
                return

    def stop(self) -> None:
        self._stop.set()
