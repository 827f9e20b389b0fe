"""A variant's measured memory is its own: one-time runtime set-up lands in the baseline.

The probe measures every variant in a fresh interpreter, so whatever the first load in a process
pays once (library set-up, lazily imported modules) would be charged to every variant. Measured
on the demo MLP before the fix: 3.8 MB for the first load, 0.8 MB for the same file loaded again
(numpy.random, imported on first use by the warm-up inputs, was ~3 MB of it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests import ROOT
from tests.portfolios import mlp_family

_SCENARIO = """
import json, shutil, sys
from pathlib import Path
from edged.runtime import open_runtime, warm_runtimes
from edged.runtime.memory import measure
warm_runtimes()
path = Path(sys.argv[1])
copy = path.with_name("copy.onnx")
shutil.copy(path, copy)
keep, measured = [], []
for p in (path, copy):
    with measure(p) as stats:
        runtime = open_runtime("onnx", p, {"threads": 1})
        runtime.warm_up()
    keep.append(runtime)
    measured.append(stats.rss_delta_bytes)
print(json.dumps(measured))
"""


def test_the_first_load_in_a_process_is_not_charged_for_one_time_set_up(tmp_path: Path) -> None:
    src = mlp_family(tmp_path / "src", "m", (64, 256, 256, 10), seed=1)
    model = src / "model.fp32.onnx"
    assert model.exists()
    done = subprocess.run(
        [sys.executable, "-c", _SCENARIO, str(model)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    first, second = json.loads(done.stdout.strip().splitlines()[-1])
    assert second > 0
    # The same file twice: the first load may touch a few more library pages, not megabytes.
    assert first - second < 1_500_000, (first, second)


def _reference_mapped(target: str, text: str) -> tuple[int, int]:
    """Every line of smaps read in turn (the parser mapped_file_bytes replaced)."""
    size = rss = 0
    inside = False
    for line in text.splitlines():
        first = line.split(maxsplit=5)
        if first and "-" in first[0] and len(first) >= 5 and not first[0].endswith(":"):
            inside = len(first) == 6 and first[5] == target
            continue
        if inside and line.startswith("Size:"):
            size += int(line.split()[1]) * 1024
        elif inside and line.startswith("Rss:"):
            rss += int(line.split()[1]) * 1024
    return size, rss


def test_mapped_bytes_of_a_file_are_read_from_smaps(tmp_path: Path) -> None:
    """Two mappings of one file (one partly touched), a file whose name holds spaces, and one
    whose path ends like another's: each counted as a line-by-line read of smaps counts it."""
    import mmap

    from edged.runtime.memory import mapped_file_bytes

    files = [tmp_path / "model.gguf", tmp_path / "my model.gguf", tmp_path / "x" / "model.gguf"]
    files[2].parent.mkdir()
    maps = []
    for i, path in enumerate(files):
        path.write_bytes(b"\1" * (1 << 20) * (i + 1))
        with path.open("rb") as f:
            for _ in range(2):
                m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
                sum(m[j] for j in range(0, 256 << 10, 4096))  # touch a quarter of a MiB
                maps.append(m)
    try:
        text = Path("/proc/self/smaps").read_text()
        for i, path in enumerate(files):
            size, rss = mapped_file_bytes(path)
            assert size == 2 * (i + 1) << 20
            assert 0 < rss <= size
            # The kernel's counts move as pages come and go: compare with a read of the same text.
            snapshot = tmp_path / "smaps"
            snapshot.write_text(text)
            assert mapped_file_bytes(path, snapshot) == _reference_mapped(str(path), text)
    finally:
        for m in maps:
            m.close()
