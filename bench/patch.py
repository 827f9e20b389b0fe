"""Patch size and speed: edged's patch engine against zstd --patch-from, bsdiff and xdelta3.

Version pairs from the demo portfolio (ONNX fp32, GGUF f16) and generated llama GGUFs of 26 MB
and 205 MB (f16), for four kinds of update:

1. "last10"    the last 10% of float tensors fine-tuned, each weight moved ~1%;
2. "full"      a full fine-tune, every weight moved ~0.1%;
3. "metadata"  a metadata-only change (GGUF general.name, ONNX doc_string);
4. "requant"   GGUF q8_0 files, each quantized by llama.cpp from f16 before and after a full
               fine-tune (GGUF pairs only).

And ONNX files laid out as other exporters write them (tests/onnx_layouts.py): an MLP trained
here on scikit-learn's digits, ~2 MB and ~11 MB, its weights in ``Constant`` nodes
(PaddlePaddle's layout) or in Constant nodes inside the branches of nested ``If`` nodes, for
three updates: "finetune" (20 Adam steps on a fifth of the data, from the trained weights: a
real fine-tune), "retrain" (trained again from another seed: most weights move by more than
100%) and "metadata" (producer and doc string). For the first two, the "per-weight bound": an
estimate of the fewest bytes any coder of each weight given its old value can reach
(``weight_bound``).

Per pair and tool: patch size, create seconds, apply seconds, apply peak RSS (whole process,
from the kernel: ru_maxrss of the waited child). Apply MB/s is measured inside edged's apply
pinned to one core (interpreter start excluded). Baselines run in the same process:
``zstd -19 --long=W --patch-from``, ``bsdiff`` (only up to --bsdiff-max-mb: it needs ~17x the
file in memory and minutes per 10 MB), ``xdelta3 -9 -s``.

    .venv/bin/python bench/patch.py [--large-mb 205] [--bsdiff-max-mb 64]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from edged.demo import gguf_llama, quantize_q8_0  # noqa: E402
from edged.update import patch  # noqa: E402
from edged.update.synthetic import finetune  # noqa: E402

MB = 1e6

# Runs a command and prints its peak RSS; the wrapper is small, so the RSS it passes on to the
# child at fork (Linux keeps it in ru_maxrss) stays far below what is measured.
PEAK = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)"
)

APPLY_TIMED = """
import os, sys, time
from pathlib import Path
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from edged.update import patch
t = time.perf_counter()
patch.apply(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
print(time.perf_counter() - t)
"""


def peak_rss(cmd: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PEAK, *cmd], check=True, capture_output=True, text=True
    )
    return time.perf_counter() - started, int(out.stdout.strip().splitlines()[-1])


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - started


def same(a: Path, b: Path) -> bool:
    return patch.sha256_file(a)[0] == patch.sha256_file(b)[0]


# -- pairs --------------------------------------------------------------------------------------


def onnx_metadata_change(src: Path, dst: Path) -> None:
    import onnx

    model = onnx.load(str(src))
    model.doc_string = "fine-tuned on snapshot-2026-02-01; release 2"
    onnx.save(model, str(dst))


def make_pairs(work: Path, demo: Path, large_layers: int, only: str | None) -> list[dict[str, Any]]:
    pairs: list[dict[str, Any]] = []

    def add(model: str, kind: str, base: Path, target: Path) -> None:
        pairs.append({"model": model, "kind": kind, "base": base, "target": target})

    for name in ("cnn", "mlp") if not only or only in "demo onnx" else ():
        base = demo / name / "model.fp32.onnx"
        for kind, fraction, rel in (("last10", 0.1, 1e-2), ("full", 1.0, 1e-3)):
            target = work / f"{name}.{kind}.onnx"
            finetune(base, target, fraction=fraction, relative=rel, seed=1)
            add(f"demo {name} fp32 onnx", kind, base, target)
        target = work / f"{name}.metadata.onnx"
        onnx_metadata_change(base, target)
        add(f"demo {name} fp32 onnx", "metadata", base, target)

    sizes: list[tuple[str, int | None, dict[str, Any]]] = [("demo tinyllama f16 gguf", None, {})]
    sizes.append(("llama f16 gguf 26 MB", 4, {"n_embd": 512, "n_ff": 1408}))
    # float32 GGUF: the same kind of weights at twice the bytes; a fine-tune moves far more
    # mantissa bits, which whole-file deltas cannot model.
    sizes.append(("llama f32 gguf 26 MB", 2, {"n_embd": 512, "n_ff": 1408, "dtype": np.float32}))
    large = {"n_embd": 1024, "n_ff": 2816}
    sizes.append((f"llama f16 gguf {large_layers * 25.7:.0f} MB", large_layers, large))
    for label, layers, dims in sizes:
        if only and only not in label:
            continue
        stem = work / label.replace(" ", "_")
        if layers is None:
            base = demo / "tinyllama" / "model.f16.gguf"
        else:
            base = stem.with_suffix(".base.gguf")
            gguf_llama(base, n_layer=layers, **dims)
        for kind, fraction, rel in (("last10", 0.1, 1e-2), ("full", 1.0, 1e-3)):
            target = stem.with_suffix(f".{kind}.gguf")
            finetune(base, target, fraction=fraction, relative=rel, seed=1)
            add(label, kind, base, target)
        target = stem.with_suffix(".metadata.gguf")
        kwargs = dict(dims, n_layer=layers) if layers else {}
        gguf_llama(target, name="edged-demo-llama release 2", **kwargs)  # type: ignore[arg-type]
        if layers is None:
            # The demo file was built with the default name: rebuild its base beside it.
            base = stem.with_suffix(".base.gguf")
            gguf_llama(base)
        add(label, "metadata", base, target)
        q_base, q_target = stem.with_suffix(".q8.base.gguf"), stem.with_suffix(".q8.full.gguf")
        quantize_q8_0(base, q_base)
        quantize_q8_0(stem.with_suffix(".full.gguf"), q_target)
        add(label.replace("f16", "q8_0"), "requant", q_base, q_target)
    return pairs


def exporter_pairs(work: Path, only: str | None) -> list[dict[str, Any]]:
    from edged import demo_digits as dd
    from tests.onnx_layouts import build, mlp

    pairs: list[dict[str, Any]] = []
    x, y, _, _ = dd.dataset()
    for label, sizes, epochs in (
        ("2 MB", (64, 512, 512, 512, 10), 4),
        ("11 MB", (64, 1536, 1024, 1024, 10), 2),
    ):
        models = [f"digits MLP {label}, {layout}" for layout in ("Constant nodes", "nested If")]
        if only and not any(only in model for model in models):
            continue
        trained = dd.train(sizes, x, y, epochs=epochs)
        tuned = dd.train(sizes, x[::5], y[::5], init=trained, steps=20, lr=2e-4, seed=3)
        retrained = dd.train(sizes, x, y, epochs=epochs, seed=dd.SEED + 1)
        # The If layout's else branches: small MLPs of their own, the same in both versions.
        branches = [mlp((64, 32, 10), 1), mlp((64, 32, 10), 2)]
        for model, layout in zip(models, ("constants", "if"), strict=True):
            stem = work / model.replace(" ", "_").replace(",", "")
            options: dict[str, Any] = {"branches": branches} if layout == "if" else {}
            base = build(trained, stem.with_suffix(".base.onnx"), layout, **options)
            for kind, params, extra in (
                ("finetune", tuned, {}),
                ("retrain", retrained, {}),
                ("metadata", trained, {"doc": "release 2", "producer": "exporter 2.1"}),
            ):
                target = stem.with_suffix(f".{kind}.onnx")
                build(params, target, layout, **options, **extra)
                pair = {"model": model, "kind": kind, "base": base, "target": target}
                if kind != "metadata":
                    pair["bound"] = weight_bound(trained, params)
                pairs.append(pair)
    return pairs


def weight_bound(
    base: list[tuple[np.ndarray, np.ndarray]], target: list[tuple[np.ndarray, np.ndarray]]
) -> int:
    """An estimate of the fewest bytes any coder that codes each weight given its old value can
    reach: per weight, the difference of the float32 bit patterns, its size class (sign and
    floor(log2|d|)) coded at its empirical entropy and the bits below the class's top bit as they
    are (training noise leaves them uniform). Bytes of the unchanged container are not counted."""

    def flat(params: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        return np.concatenate([np.ravel(a).astype(np.float32) for layer in params for a in layer])

    old, new = flat(base).view(np.int32), flat(target).view(np.int32)
    d = new.astype(np.int64) - old.astype(np.int64)
    top = np.where(d == 0, -1, np.floor(np.log2(np.maximum(np.abs(d), 1))).astype(np.int64))
    _, counts = np.unique(top * 2 + (d < 0), return_counts=True)
    p = counts / counts.sum()
    bits = float(-(p * np.log2(p)).sum() * d.size + np.maximum(top, 0).sum())
    return int(bits / 8)


# -- tools --------------------------------------------------------------------------------------


def run_edged(base: Path, target: Path, work: Path) -> dict[str, float]:
    out, result = work / "edged.patch", work / "edged.out"
    started = time.perf_counter()
    patch.create(base, target, out)
    create = time.perf_counter() - started
    apply_wall, rss = peak_rss(
        [
            sys.executable,
            "-m",
            "edged",
            "patch",
            "apply",
            "--base",
            str(base),
            str(out),
            "-o",
            str(result),
        ]
    )
    assert same(result, target)
    result.unlink()
    inner = subprocess.run(
        [sys.executable, "-c", APPLY_TIMED, str(base), str(out), str(result)],
        check=True,
        capture_output=True,
        text=True,
    )
    apply = float(inner.stdout.strip())
    assert same(result, target)
    return {
        "size": out.stat().st_size,
        "create": create,
        "apply": apply,
        "rss": rss,
        "apply_process": apply_wall,
    }


def run_zstd(base: Path, target: Path, work: Path) -> dict[str, float]:
    out, result = work / "zstd.patch", work / "zstd.out"
    window = max(27, (max(base.stat().st_size, target.stat().st_size) - 1).bit_length() + 1)
    create = timed(
        [
            "zstd",
            "-q",
            "-f",
            "-19",
            f"--long={window}",
            "--patch-from",
            str(base),
            str(target),
            "-o",
            str(out),
        ]
    )
    apply, rss = peak_rss(
        [
            "zstd",
            "-q",
            "-f",
            "-d",
            f"--long={window}",
            "--patch-from",
            str(base),
            str(out),
            "-o",
            str(result),
        ]
    )
    assert same(result, target)
    return {"size": out.stat().st_size, "create": create, "apply": apply, "rss": rss}


def run_bsdiff(base: Path, target: Path, work: Path) -> dict[str, float]:
    out, result = work / "bsdiff.patch", work / "bsdiff.out"
    create = timed(["bsdiff", str(base), str(target), str(out)])
    apply, rss = peak_rss(["bspatch", str(base), str(result), str(out)])
    assert same(result, target)
    return {"size": out.stat().st_size, "create": create, "apply": apply, "rss": rss}


def run_xdelta(base: Path, target: Path, work: Path) -> dict[str, float]:
    out, result = work / "xdelta.patch", work / "xdelta.out"
    create = timed(["xdelta3", "-f", "-9", "-e", "-s", str(base), str(target), str(out)])
    apply, rss = peak_rss(["xdelta3", "-f", "-d", "-s", str(base), str(out), str(result)])
    assert same(result, target)
    return {"size": out.stat().st_size, "create": create, "apply": apply, "rss": rss}


TOOLS = {"edged": run_edged, "zstd-19": run_zstd, "bsdiff": run_bsdiff, "xdelta3": run_xdelta}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--large-layers", type=int, default=8, help="8 layers: 205 MB")
    parser.add_argument("--bsdiff-max-mb", type=float, default=64.0)
    parser.add_argument("--only", help="substring of the model label to run")
    parser.add_argument("--kinds", nargs="+", help="update kinds to run (last10 full metadata q8)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "patch.json"))
    args = parser.parse_args()
    missing = [t for t in ("zstd", "bsdiff", "xdelta3") if shutil.which(t) is None]
    if missing:
        print(f"missing tools: {missing} (apt-get install -y zstd bsdiff xdelta3)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="edged-patch-bench-"))
    try:
        from edged.demo import build_demo

        demo = work / "demo"
        build_demo(demo)
        pairs = (
            []
            if args.only and "digits" in args.only
            else make_pairs(work, demo, args.large_layers, args.only)
        )
        pairs += exporter_pairs(work, args.only)
        rows = []
        for pair in pairs:
            if args.only and args.only not in pair["model"]:
                continue
            if args.kinds and pair["kind"] not in args.kinds:
                continue
            size = pair["target"].stat().st_size
            row: dict[str, Any] = {"model": pair["model"], "kind": pair["kind"], "target": size}
            if "bound" in pair:
                row["bound"] = pair["bound"]
            for tool, run in TOOLS.items():
                if tool == "bsdiff" and size > args.bsdiff_max_mb * MB:
                    continue
                row[tool] = run(pair["base"], pair["target"], work)
                for leftover in work.glob("*.out"):
                    leftover.unlink()
            rows.append(row)
            print(summary_line(row), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))
        print()
        print(table(rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def summary_line(row: dict[str, Any]) -> str:
    e = row["edged"]
    others = {t: row[t]["size"] for t in TOOLS if t != "edged" and t in row}
    best_tool = min(others, key=lambda t: others[t])
    return (
        f"{row['model']:<28} {row['kind']:<9} target {row['target'] / MB:8.2f} MB  "
        f"edged {e['size']:>10} B  best other {best_tool} {others[best_tool]:>10} B  "
        f"ratio {e['size'] / others[best_tool]:.3f}  "
        f"create x{row['zstd-19']['create'] / e['create']:.0f} faster than zstd-19  "
        f"apply {row['target'] / MB / e['apply']:.0f} MB/s"
        + (
            f"  per-weight bound {row['bound']} B ({e['size'] / row['bound']:.3f}x)"
            if "bound" in row
            else ""
        )
    )


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| pair | update | target MB | edged B | zstd -19 B | bsdiff B | xdelta3 B "
        "| edged / best | create s: edged / zstd-19 | apply MB/s (1 core) "
        "| apply peak RSS MB: edged / zstd / xdelta3 | per-weight bound B (edged / bound) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        e = row["edged"]
        sizes = {t: row[t]["size"] for t in TOOLS if t != "edged" and t in row}
        best = min(sizes.values())
        cell = {t: str(sizes[t]) if t in sizes else "—" for t in ("zstd-19", "bsdiff", "xdelta3")}
        lines.append(
            f"| {row['model']} | {row['kind']} | {row['target'] / MB:.2f} | {e['size']} | "
            f"{cell['zstd-19']} | {cell['bsdiff']} | {cell['xdelta3']} | "
            f"{e['size'] / best:.3f} ({e['size'] - best:+d} B) | "
            f"{e['create']:.2f} / {row['zstd-19']['create']:.2f} | "
            f"{row['target'] / MB / e['apply']:.0f} | "
            f"{e['rss'] / MB:.0f} / {row['zstd-19']['rss'] / MB:.0f} / "
            f"{row['xdelta3']['rss'] / MB:.0f} | "
            + (f"{row['bound']} ({e['size'] / row['bound']:.3f}) |" if "bound" in row else "— |")
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
