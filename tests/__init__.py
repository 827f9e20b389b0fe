"""edged's tests: unit/ (pure, in-process), service/ (the core and the service layer in-process,
real runtimes), e2e/ (the daemon as a subprocess, real clients and servers)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository
