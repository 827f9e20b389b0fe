"""The daemon's resident memory at rest, and what makes it up (issue 18).

1. RSS of `edged serve` once it reports SERVING: with an empty store, and with the demo
   portfolio (its models loaded as start-up places them). Median of ``--runs`` starts.
2. What it is made of: a fresh interpreter's RSS after each import. A runtime is imported and
   warmed at start only when the store holds a variant of its format, the fleet's clients only
   when the fleet is enabled.

    .venv/bin/python bench/idle_memory.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.daemon import DaemonProcess  # noqa: E402

STEPS = [
    ("python", "pass"),
    ("numpy", "import numpy"),
    ("grpc + protobuf", "import grpc, grpc.aio, google.protobuf"),
    ("edged.app (the daemon's modules and libraries, no runtime)", "import edged.app"),
    ("onnxruntime (when the store holds an ONNX model)", "import onnxruntime"),
    ("llama_cpp (when it holds a GGUF model)", "import llama_cpp"),
    ("httpx + aiomqtt (when [fleet] is enabled)", "import httpx, aiomqtt"),
]


def rss_of(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value, *_ = line.split()
        fields[key.rstrip(":")] = int(value) * 1024
    return {
        "rss": fields["Rss"],
        "anon": fields.get("Anonymous", 0),
        "file": fields["Rss"] - fields.get("Anonymous", 0),
    }


def daemon_rss(store: Path, settle: float) -> dict[str, int]:
    daemon = DaemonProcess(store, preload__enabled=False).start()
    try:
        time.sleep(settle)  # start-up loads and warm-ups finished
        assert daemon.proc is not None
        return rss_of(daemon.proc.pid)
    finally:
        daemon.stop()


def imports() -> list[tuple[str, int]]:
    code = (
        "import json, sys\n"
        "def rss():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmRSS'): return int(line.split()[1]) * 1024\n"
        "out = []\n"
        f"for name, stmt in {STEPS!r}:\n"
        "    exec(stmt)\n"
        "    out.append((name, rss()))\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return [tuple(x) for x in json.loads(done.stdout)]  # type: ignore[misc]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=5.0)
    args = parser.parse_args()
    from edged.demo import build_demo
    from tests.conftest import import_demo

    work = Path(tempfile.mkdtemp(prefix="edged-idle-"))
    build_demo(work / "src")
    rows = {}
    for label in ("empty store", "demo portfolio"):
        samples = []
        for run in range(args.runs):
            store = work / f"{label.replace(' ', '-')}-{run}" / "store"
            if label == "empty store":
                store.mkdir(parents=True)
            else:
                import_demo(store, work / "src")
            samples.append(daemon_rss(store, args.settle))
        rows[label] = {k: int(statistics.median(s[k] for s in samples)) for k in samples[0]}
    print("| daemon | RSS MB | anonymous MB | file-backed MB |")
    print("|---|---:|---:|---:|")
    for label, r in rows.items():
        print(f"| {label} | {r['rss'] / 1e6:.1f} | {r['anon'] / 1e6:.1f} | {r['file'] / 1e6:.1f} |")
    print()
    print("| after importing | RSS MB | added MB |")
    print("|---|---:|---:|")
    previous = 0
    for name, rss in imports():
        print(f"| {name} | {rss / 1e6:.1f} | {(rss - previous) / 1e6:+.1f} |")
        previous = rss
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
