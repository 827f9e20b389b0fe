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
