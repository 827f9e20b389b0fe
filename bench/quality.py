"""Quality measured on the digits demo (real labelled data, built offline as `edged demo` does).

1. The cascade: accuracy and compute per request for the student alone (int8), the teacher alone
   (fp32) and the cascade (student-int8 -> teacher-fp32) at three agreement targets. The
   threshold is fitted by the daemon's own calibration (runtime/cascade.py) on half of the
   held-out split, every request run by both stages; accuracy and compute are measured on the
   other half. Compute: multiply-adds per request relative to the teacher's, and measured time.
2. The canary on a tail regression (version 2 = the student, version 1 = the teacher): requests
   until the canary decides, stratified (hardest stratum sampled 5x, tested per stratum) against
   uniform sampling with the same per-stratum tests, at the same share, over 30 seeded request
   orders; and what the conventional uniform canary (one test over all) decides.
3. The request path's cost of confidence and strata: the monitor's note per request (what the
   request path does), its flush per request (off the path), and InferenceService.infer with the
   monitor against a monitor that notes nothing, interleaved.

    .venv/bin/python bench/quality.py [--out bench/out/quality.md]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402

from edged.demo_digits import STUDENT, TEACHER, build, multiply_adds  # noqa: E402
from edged.events import NoEvents  # noqa: E402
from edged.lifecycle.statistics import Outcome  # noqa: E402
from edged.lifecycle.stratified import PerStratum  # noqa: E402
from edged.quality.monitor import QualityMonitor  # noqa: E402
from edged.quality.strata import Strata  # noqa: E402
from edged.runtime.cascade import Calibration, top1  # noqa: E402
from edged.settings import QualitySettings  # noqa: E402
from edged.store.lineage import OutputKind  # noqa: E402


def session(path: Path) -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def per_request_us(sess: Any, xs: np.ndarray[Any, Any]) -> float:
    times = []
    for x in xs:
        start = time.perf_counter_ns()
        sess.run(None, {"input": x[None, :]})
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e3


def cascade_section(directory: Path) -> list[str]:
    data = np.load(directory / "heldout.npz")
    x, y = data["x"], data["y"]
    half = len(x) // 2
    small, teacher = (
        session(directory / "student.int8.onnx"),
        session(directory / "teacher.fp32.onnx"),
    )
    small_out = small.run(None, {"input": x})[0]
    teacher_out = teacher.run(None, {"input": x})[0]
    conf = np.array([top1(row[None, :]) for row in small_out])
    agree = small_out.argmax(1) == teacher_out.argmax(1)
    cost_small, cost_teacher = multiply_adds(STUDENT), multiply_adds(TEACHER)
    us_small = per_request_us(small, x[half:][:300])
    us_teacher = per_request_us(teacher, x[half:][:300])
    test = slice(half, None)
    rows = [
        (
            "student-int8 alone",
            (small_out[test].argmax(1) == y[test]).mean(),
            cost_small / cost_teacher,
            us_small,
            0.0,
        ),
        (
            "teacher-fp32 alone",
            (teacher_out[test].argmax(1) == y[test]).mean(),
            1.0,
            us_teacher,
            1.0,
        ),
    ]
    for target in (0.98, 0.99, 0.995):
        calibration = Calibration(target)
        for c, a in zip(conf[:half], agree[:half], strict=True):
            calibration.add(float(c), bool(a), 1.0)
        threshold = calibration.fit() or 1.0
        escalate = conf[test] < threshold
        answer = np.where(escalate, teacher_out[test].argmax(1), small_out[test].argmax(1))
        share = float(escalate.mean())
        rows.append(
            (
                f"cascade, agreement {target:g} (threshold {threshold:.3f})",
                (answer == y[test]).mean(),
                (cost_small + share * cost_teacher) / cost_teacher,
                us_small + share * us_teacher,
                share,
            )
        )
    teacher_accuracy = rows[1][1]
    lines = [
        f"Held-out digits: {len(x)} (calibration on the first {half}, measured on the other "
        f"{len(x) - half}); teacher {cost_teacher} multiply-adds, student {cost_small} "
        f"({cost_teacher / cost_small:.0f}x cheaper).",
        "",
        "| serving | accuracy | vs teacher | teacher answers | compute (of the teacher's MACs) "
        "| run time per request |",
        "|---|---|---|---|---|---|",
    ]
    for name, acc, compute, us, share in rows:
        lines.append(
            f"| {name} | {acc:.2%} | {(acc - teacher_accuracy) * 100:+.2f} pts | {share:.1%} | "
            f"{compute:.1%} | {us:.1f} us |"
        )
    return lines


def canary_section(directory: Path, seeds: int = 30) -> list[str]:
    data = np.load(directory / "heldout.npz")
    x = data["x"]
    teacher = session(directory / "teacher.fp32.onnx").run(None, {"input": x})[0]
    student = session(directory / "student.fp32.onnx").run(None, {"input": x})[0]
    conf = np.array([top1(row[None, :]) for row in teacher])
    agree = teacher.argmax(1) == student.argmax(1)
    strata = Strata()
    strata.observe(list(conf))
    stratum = np.array([strata.stratum(float(c)) for c in conf])
    hard = agree[stratum == 0].mean()
    share = 0.2

    def run(seed: int, factor: float, per_stratum: bool) -> tuple[int, Outcome]:
        rng = np.random.default_rng(seed)
        tests = PerStratum(
            strata.count, stratified=per_stratum, good=0.95, bad=0.91, min_samples=30
        )
        for n in range(1, 200_000):
            i = rng.integers(len(x))
            s = int(stratum[i])
            if rng.random() < min(share * (factor if s == 0 else 1.0), 1.0):
                tests.observe(s, bool(agree[i]))
            outcome = tests.outcome()
            if outcome is not Outcome.UNDECIDED:
                return n, outcome
        return n, Outcome.UNDECIDED

    results = {}
    for label, factor, per_stratum in (
        ("stratified (hardest stratum 5x, per-stratum tests)", 5.0, True),
        ("uniform sampling, per-stratum tests", 1.0, True),
        ("uniform, one test over all (the conventional canary)", 1.0, False),
    ):
        runs = [run(seed, factor, per_stratum) for seed in range(seeds)]
        results[label] = (
            statistics.median(n for n, _ in runs),
            {o: sum(r == o for _, r in runs) for o in (Outcome.FAIL, Outcome.PASS)},
        )
    lines = [
        f"Version 2 (the student) agrees with version 1 (the teacher) on {agree.mean():.1%} of the "
        f"held-out digits, on {hard:.1%} of the hardest 10% (by the teacher's confidence). Canary "
        f"share {share:.0%}; per test H0 agreement >= 95%, H1 <= 91%, alpha = beta = 0.05, at "
        f"least 30 samples; {seeds} seeded request orders.",
        "",
        "| canary | requests until a decision (median) | decided: rolled back / passed |",
        "|---|---|---|",
    ]
    for label, (median, counts) in results.items():
        lines.append(
            f"| {label} | {median:.0f} | {counts[Outcome.FAIL]} / {counts[Outcome.PASS]} |"
        )
    strat = results["stratified (hardest stratum 5x, per-stratum tests)"][0]
    uni = results["uniform sampling, per-stratum tests"][0]
    lines += ["", f"Stratified / uniform requests until a decision: {strat / uni:.2f} x."]
    return lines


def cost_section(directory: Path) -> list[str]:
    from edged.serving.inference import InferenceService
    from edged.store.store import ModelStore
    from edged.tensors import GenerationParams
    from tests.portfolios import DeclaredProber, make_settings, open_portfolio

    work = Path(tempfile.mkdtemp(prefix="edged-quality-"))
    store = ModelStore(work / "store")
    store.import_dir(directory)
    settings = make_settings()
    portfolio = open_portfolio(store, work, settings, prober=DeclaredProber())
    real = QualityMonitor(QualitySettings(), None, NoEvents())

    class Silent(QualityMonitor):
        def note(self, *args: Any, **kwargs: Any) -> None:
            pass

    silent = Silent(QualitySettings(), None, NoEvents())
    with_quality = InferenceService(portfolio, NoEvents(), 2, real)
    without = InferenceService(portfolio, NoEvents(), 2, silent)
    params = GenerationParams()
    x = {"input": np.load(directory / "heldout.npz")["x"][:1]}
    kinds = {"logits": OutputKind("class_scores")}
    outputs = [("logits", np.zeros((1, 10), np.float32))]

    async def run() -> dict[str, list[float]]:
        await portfolio.load("digits", "student-int8")
        times: dict[str, list[float]] = {"with": [], "without": [], "note": []}
        for _ in range(3000):
            for name, service in (("with", with_quality), ("without", without)):
                start = time.perf_counter_ns()
                await service.infer("digits", "", x, [], params)
                times[name].append(time.perf_counter_ns() - start)
        for _ in range(20000):
            start = time.perf_counter_ns()
            real.note("digits", "1", "student-int8", "", outputs, kinds)
            times["note"].append(time.perf_counter_ns() - start)
        start = time.perf_counter_ns()
        real.flush()
        times["flush"] = [(time.perf_counter_ns() - start) / 20000]
        with_quality.close()
        without.close()
        await portfolio.close()
        return times

    times = asyncio.run(run())
    p50 = {k: statistics.median(v) / 1e3 for k, v in times.items()}
    return [
        "| measure | per request (median) |",
        "|---|---|",
        f"| InferenceService.infer, student-int8, with the monitor | {p50['with']:.1f} us |",
        f"| the same, a monitor that notes nothing (interleaved) | {p50['without']:.1f} us |",
        f"| difference | {p50['with'] - p50['without']:+.1f} us |",
        f"| the monitor's note alone (the request path's part) | {p50['note']:.2f} us |",
        f"| its flush, per request (scoring, strata; off the path) | {p50['flush']:.1f} us |",
    ]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "quality.md"))
    args = parser.parse_args()
    directory = build(Path(tempfile.mkdtemp(prefix="edged-digits-")))
    lines = ["### The cascade", "", *cascade_section(directory), ""]
    lines += ["### The canary on a tail regression", "", *canary_section(directory), ""]
    lines += ["### Cost on the request path", "", *cost_section(directory)]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
