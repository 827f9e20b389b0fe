"""How the last run died: of a fatal signal inside the process, or killed from outside.

The crash journal says what was loading or running when the daemon died, not why it died. The two
causes call for different verdicts. A native runtime that faults (SIGSEGV in a kernel, SIGABRT
from an uncaught C++ exception, SIGBUS on a truncated mapping) is the variant's doing, and a
variant that does it again would crash-loop the daemon. A power cut, an operator's ``kill -9`` or
systemd's stop timeout is nobody's doing, and an edge box under steady traffic always has requests
in flight when the power goes: blaming those would quarantine the model that serves after two
power cuts.

Python's faulthandler tells the two apart: armed on a file, it writes the traceback of every
thread there when a fatal signal arrives, then lets the signal kill the process. SIGKILL and a
power cut leave the file empty. The file is read (and its traceback logged for the operator) at
the next start, then emptied and armed again.
"""

from __future__ import annotations

import faulthandler
import logging
import os
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

# A traceback of every thread of a busy daemon fits; the head is what an operator reads.
MAX_DUMP_BYTES = 64 * 1024


class FatalSignals:
    """faulthandler's file: what the last run left there, then armed for this run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def previous(self) -> str:
        """The traceback a fatal signal wrote in the last run; empty if it died otherwise."""
        try:
            with open(self.path, "rb") as file:
                return file.read(MAX_DUMP_BYTES).decode(errors="replace").strip()
        except FileNotFoundError:
            return ""

    def arm(self) -> None:
        """Empty the file and have faulthandler write there from now on (process-wide: the daemon
        owns the process; a second arm moves it)."""
        self.disarm()
        self._file = open(self.path, "w")  # noqa: SIM115 - faulthandler writes to it until exit
        os.fsync(self._file.fileno())  # the emptied file survives a power cut
        faulthandler.enable(file=self._file, all_threads=True)

    def disarm(self) -> None:
        if self._file is not None:
            faulthandler.disable()
            self._file.close()
            self._file = None
