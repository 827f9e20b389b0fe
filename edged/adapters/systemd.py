"""sd_notify without libsystemd: READY, RELOADING, STOPPING, WATCHDOG and STATUS messages."""

from __future__ import annotations

import os
import socket
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
