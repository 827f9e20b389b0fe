"""Runs tests/wire_cases.py in a fresh interpreter.

edged's generated inference_pb2 and tritonclient's service_pb2 register the same protobuf
symbols ("inference.ModelInferRequest", ...) in the default descriptor pool, so they cannot be
imported into one process; the end-to-end tests import tritonclient.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CASES = Path(__file__).with_name("wire_cases.py")
SCREEN_CASES = Path(__file__).with_name("screen_cases.py")


def test_wire_cases() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
        check=False,  # the assertion below shows the inner run's output
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_screen_cases() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(SCREEN_CASES)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
