"""Validate a variant in a throwaway subprocess: load it and run one inference.

Native runtimes can take the whole process down on a bad file or a bad kernel (a SIGSEGV inside
llama.cpp cannot be caught), so the daemon never loads a file into its own process before this
probe has loaded and run it elsewhere. The child prints one JSON line; the parent turns a crash,
a hang or an error into a reason a person can read.

Run as ``python -m edged.runtime.probe FORMAT PATH OPTIONS_JSON``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edged.store.manifest import Variant
    from edged.store.store import ModelStore

log = logging.getLogger(__name__)

# 2: memory measured after the runtimes are initialised. 3: numpy.random imported before the
# measured window (results of 2 charged every variant ~3 MB of it; since a load is charged at
# least the probe's figure, stores upgraded from 2 must re-measure).
PROBE_VERSION = 3


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    usable: bool
    reason: str = ""
    load_seconds: float = 0.0
    memory_bytes: int = 0
    inputs: tuple[dict[str, Any], ...] = ()
    outputs: tuple[dict[str, Any], ...] = ()
    platform: str = ""

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["probe_version"] = PROBE_VERSION
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProbeResult | None:
        if data.get("probe_version") != PROBE_VERSION:
            return None
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["inputs"] = tuple(values.get("inputs", ()))
        values["outputs"] = tuple(values.get("outputs", ()))
        return cls(**values)


def _describe_exit(returncode: int, stderr: bytes) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the runtime crashed ({name}) while loading or running this file"
    lines = [ln for ln in stderr.decode(errors="replace").strip().splitlines() if ln.strip()]
    detail = lines[-1] if lines else f"exit status {returncode}"
    return f"the runtime could not load or run this file: {detail}"


def _run_child(args: list[str], timeout: float) -> tuple[int, bytes, bytes] | None:
    """The probe child's exit status and output; None when it outlived ``timeout`` (killed).

    CPython's subprocess starts it with vfork + exec. The event loop's own subprocess support
    (uvloop's libuv) forks instead, and a fork of a daemon whose gRPC and runtime threads are
    busy could crash the child before it ran anything (seen: SIGSEGV within 13 ms, under load).
    """
    try:
        done = subprocess.run(
            args, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return None
    return done.returncode, done.stdout, done.stderr


async def probe(fmt: str, path: Path, options: dict[str, Any], timeout: float) -> ProbeResult:
    """Run the probe child (off the event loop) and wait for it, at most ``timeout`` s."""
    args = [sys.executable, "-m", "edged.runtime.probe", fmt, str(path), json.dumps(options)]
    outcome = await asyncio.to_thread(_run_child, args, timeout)
    if outcome is None:
        return ProbeResult(False, f"validation timed out after {timeout:g}s (the runtime hung)")
    returncode, stdout, stderr = outcome
    if returncode != 0:
        return ProbeResult(False, _describe_exit(returncode, stderr))
    try:
        data = json.loads(stdout.decode().strip().splitlines()[-1])
        result = ProbeResult.from_json(data)
    except (ValueError, IndexError):
        result = None
    if result is None:
        return ProbeResult(False, "validation printed no result (the probe is broken)")
    return result


def stored_result(store: ModelStore, variant: Variant) -> ProbeResult | None:
    """The verdict recorded for a variant's file, if one from this probe version exists."""
    record = store.validation(variant)
    return ProbeResult.from_json(record) if record else None


def record_result(store: ModelStore, variant: Variant, result: ProbeResult) -> None:
    """Remember a verdict for a variant's file (per blob and format)."""
    store.put_validation(variant, result.to_json())


async def probe_and_record(store: ModelStore, variant: Variant, timeout: float) -> ProbeResult:
    """Probe a variant's file in a subprocess and record the verdict in the store."""
    log.info("validating %s (%s) in a subprocess", variant.file, variant.sha256[:12])
    result = await probe(variant.format, store.variant_path(variant), variant.options, timeout)
    record_result(store, variant, result)
    return result


def _child(fmt: str, path: Path, options: dict[str, Any]) -> ProbeResult:
    from edged.runtime import open_runtime, warm_runtimes
    from edged.runtime.memory import measure

    warm_runtimes()  # as in the daemon: one-time runtime set-up is not the variant's memory
    start = time.perf_counter()
    with measure(path) as stats:
        runtime = open_runtime(fmt, path, options)
        runtime.warm_up()
    return ProbeResult(
        usable=True,
        load_seconds=time.perf_counter() - start,
        memory_bytes=stats.memory_bytes,
        inputs=tuple(s.to_json() for s in runtime.inputs),
        outputs=tuple(s.to_json() for s in runtime.outputs),
        platform=runtime.platform,
    )


def main(argv: list[str]) -> int:
    fmt, path, options = argv[0], Path(argv[1]), json.loads(argv[2])
    try:
        result = _child(fmt, path, options)
    except Exception as exc:  # any Python-level failure is a clean "unusable" verdict
        result = ProbeResult(False, f"the runtime could not load or run this file: {exc}")
    print(json.dumps(result.to_json()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
