"""Applying a patch to a large model holds a bounded amount of memory, whatever the model size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edged.demo import gguf_llama
from edged.update import patch
from edged.update.synthetic import finetune

MiB = 1 << 20

# Runs in a fresh interpreter so that the measurement is the apply alone: RSS just before it,
# and the peak RSS (VmHWM, reset just before) after it. Not ru_maxrss: Linux carries the
# parent's peak into it across fork and exec.
MEASURE = """
import sys
from pathlib import Path
from edged.update import patch

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak RSS to the current RSS
before = status("VmRSS")
patch.apply(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
print(status("VmHWM") - before)
"""


def test_apply_peak_memory_on_a_200_mb_model(tmp_path: Path) -> None:
    base, target, made = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "p"
    gguf_llama(base, n_embd=1024, n_ff=2816, n_layer=8)
    assert base.stat().st_size >= 200_000_000
    finetune(base, target, fraction=1.0, relative=1e-3)
    header = patch.create(base, target, made)
    largest_op = max(max(op.length, op.b) for op in header.ops)
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, str(base), str(made), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    growth = int(run.stdout.strip())
    assert (tmp_path / "out").stat().st_size == target.stat().st_size
    assert patch.sha256_file(tmp_path / "out")[0] == header.target_sha256
    assert growth < 64 * MiB + largest_op, (
        f"apply grew RSS by {growth / MiB:.1f} MiB (largest op {largest_op / MiB:.1f} MiB)"
    )
