"""How small can a patch of a synthetic fine-tune be? The information the update adds, per pair.

bench/patch.py's updates move each chosen weight by ``relative`` x N(0, 1) of itself
(edged/update/synthetic.py). A receiver that holds the base knows every weight before the move,
so a patch must carry the moves and nothing less. Two estimates of that content, per changed
tensor, summed:

- *analytic*: in units of the base weight's last place, a move is Gaussian with
  sigma = relative x significand x 2^mantissa_bits; its entropy is log2(sigma) + log2(sqrt(2 pi e))
  bits (the entropy of the generator itself; exact when sigma >> 1 ulp);
- *empirical, conditioned*: the entropy of the integer differences of the bit patterns, grouped by
  the top 3 mantissa bits of the base weight. Accurate when the moves take few distinct values
  (f16, sigma ~ 1 ulp); biased low when there are fewer samples than possible values.

The bound quoted is the analytic one when sigma >= 4 ulps for most weights, else the empirical one.

    .venv/bin/python bench/patch_bound.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edged.demo import gguf_llama  # noqa: E402
from edged.formats import detect  # noqa: E402
from edged.update.synthetic import finetune  # noqa: E402

# Same files as bench/patch.py (generator, dimensions, seeds).
PAIRS: list[tuple[str, dict[str, Any]]] = [
    ("demo tinyllama f16 gguf", {}),
    ("llama f16 gguf 26 MB", {"n_layer": 4, "n_embd": 512, "n_ff": 1408}),
    ("llama f32 gguf 26 MB", {"n_layer": 2, "n_embd": 512, "n_ff": 1408, "dtype": np.float32}),
]
UPDATES = (("last10", 0.1, 1e-2), ("full", 1.0, 1e-3))
BITS = {2: (np.uint16, np.float16, 10), 4: (np.uint32, np.float32, 23)}


def entropy_bytes(values: np.ndarray[Any, Any]) -> float:
    _, counts = np.unique(values, return_counts=True)
    return float(-(counts * np.log2(counts / counts.sum())).sum() / 8)


def bound(base: Path, target: Path, relative: float) -> dict[str, float]:
    a, b = base.read_bytes(), target.read_bytes()
    with base.open("rb") as f:
        layout = detect(f, base)
    out = {"changed_bytes": 0.0, "analytic": 0.0, "empirical": 0.0, "wide": 0.0, "weights": 0.0}
    for tensor in layout.tensors:
        if tensor.width not in BITS:
            continue
        uint, real, mantissa = BITS[tensor.width]
        count = tensor.length // tensor.width
        x = np.frombuffer(a, uint, count, tensor.offset)
        y = np.frombuffer(b, uint, count, tensor.offset)
        if np.array_equal(x, y):
            continue
        out["changed_bytes"] += tensor.length
        moves = y.astype(np.int64) - x.astype(np.int64)
        context = (x >> (mantissa - 3)) & 0x7
        out["empirical"] += sum(entropy_bytes(moves[context == c]) for c in np.unique(context))
        weights = np.abs(x.view(real).astype(np.float64))
        significand, _ = np.frexp(weights[weights != 0])  # in [0.5, 1)
        sigma = relative * 2 * significand * 2.0**mantissa
        bits = np.log2(sigma) + 0.5 * np.log2(2 * np.pi * np.e)
        out["analytic"] += float(np.clip(bits, 0, None).sum() / 8)
        out["wide"] += float((sigma >= 4).sum())
        out["weights"] += sigma.size
    return out


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="edged-bound-"))
    try:
        table(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def table(work: Path) -> None:
    print("| pair | update | changed tensor bytes | analytic B | empirical (cond.) B | bound B |")
    print("|---|---|---:|---:|---:|---:|")
    for label, dims in PAIRS:
        base = work / "base.gguf"
        gguf_llama(base, **dims)
        for kind, fraction, relative in UPDATES:
            target = work / f"{kind}.gguf"
            finetune(base, target, fraction=fraction, relative=relative, seed=1)
            r = bound(base, target, relative)
            use = r["analytic"] if r["wide"] >= 0.5 * r["weights"] else r["empirical"]
            print(
                f"| {label} | {kind} | {r['changed_bytes']:.0f} | {r['analytic']:.0f} | "
                f"{r['empirical']:.0f} | {use:.0f} |"
            )


if __name__ == "__main__":
    raise SystemExit(main())
