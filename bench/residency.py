"""Residency policies replayed on a synthetic trace in simulated time.

Per-variant memory and load time are measured once, by edged's own subprocess probe, on the demo
portfolio plus three mid-size MLP families (fp32/int8, 8.4 MB of fp32 weights each). The
simulated portfolio has 12 models: two copies of each of those six measured families. Budgets
are 30/50/70% of the portfolio's best-variant (fp32/f16) bytes.

edged's policy is the daemon's own residency engine (edged/portfolio/engine.py), driven on a
virtual clock by edged/sim/edged_policy.py with the daemon's default settings. Baselines, each
run twice (always the best variant; always the smallest), since today's servers serve one file
per model:

- LRU (llama.cpp's router, ModelMesh);
- Ollama's order: 5-minute keep-alive, expired models unloaded, the soonest-expiring evicted first;
- GreedyDual-Size-Frequency (priority = L + frequency x load cost / size).

Reported per budget: cold-start rate; quality-weighted hit rate (sum over requests served warm of
the serving variant's quality / all requests); mean added latency (cold-load seconds per request).

    .venv/bin/python bench/residency.py [--days 2] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edged.demo import build_demo  # noqa: E402
from edged.portfolio.scoring import Option  # noqa: E402
from edged.runtime.probe import probe  # noqa: E402
from edged.settings import PreloadSettings  # noqa: E402
from edged.sim.baselines import BeladyPolicy, GdsfPolicy, LruPolicy, OllamaPolicy  # noqa: E402
from edged.sim.edged_policy import EdgedPolicy  # noqa: E402
from edged.sim.policy import Options, Policy, replay  # noqa: E402
from edged.sim.trace import DAY, TraceSpec, synthesize  # noqa: E402
from edged.store.manifest import loads  # noqa: E402
from tests.portfolios import mlp_family  # noqa: E402


def measure_families(work: Path) -> list[list[Option]]:
    """Memory and load time of every variant, by the same subprocess probe the daemon uses."""
    src = work / "src"
    dirs = build_demo(src)
    dirs += [mlp_family(src, f"mid{i}", (512, 1024, 1024, 512), seed=i) for i in range(3)]
    families = []
    for directory in dirs:
        manifest = loads((directory / "manifest.json").read_bytes())
        options = []
        for v in manifest.variants:
            result = asyncio.run(probe(v.format, directory / v.file, v.options, 120))
            assert result.usable, result.reason
            options.append(
                Option(v.id, max(result.memory_bytes, v.size), v.quality, result.load_seconds)
            )
        families.append(options)
        print(
            f"  {manifest.name:10} "
            + "  ".join(
                f"{o.variant}: {o.bytes / 1e6:.1f} MB {o.load_seconds * 1e3:.0f} ms "
                f"q={o.quality:.3f}"
                for o in options
            ),
            flush=True,
        )
    return families


def measured_portfolio(remeasure: bool = False) -> Options:
    """12 models: two of each measured family (measurements cached in bench/out/variants.json)."""
    cache = ROOT / "bench" / "out" / "variants.json"
    if cache.exists() and not remeasure:
        families = [[Option(**o) for o in f] for f in json.loads(cache.read_text())]
    else:
        print("measuring variants (subprocess probe):", flush=True)
        families = measure_families(Path(tempfile.mkdtemp(prefix="edged-residency-")))
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps([[dataclasses.asdict(o) for o in f] for f in families]))
    models = [f"m{i:02d}" for i in range(2 * len(families))]
    return {m: families[i % len(families)] for i, m in enumerate(models)}


def standard_trace(models: list[str], days: float, seed: int) -> list[tuple[float, str]]:
    """Zipf 1.1 with drift, a daily cycle, bursts, 3 timers and 2 pipelines."""
    return synthesize(
        TraceSpec(
            models=tuple(models),
            duration=days * DAY,
            seed=seed,
            timers=((models[3], 600.0), (models[8], 900.0), (models[10], 3600.0)),
            pipelines=((models[1], models[5], models[9]), (models[4], models[7])),
        )
    )


def best_total(options: Options) -> int:
    return sum(max(o.bytes for o in os) for os in options.values())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--remeasure", action="store_true", help="probe the variants again")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "residency.md"))
    args = parser.parse_args()

    options = measured_portfolio(args.remeasure)
    models = sorted(options)
    events = standard_trace(models, args.days, args.seed)
    total_best = best_total(options)
    lines = [
        f"Trace: seed {args.seed}, {args.days:g} simulated days, {len(events)} requests, "
        f"{len(models)} models (Zipf 1.1 with drift, daily cycle, bursts, 3 timers, "
        f"2 pipelines). Best-variant total {total_best / 1e6:.1f} MB.",
        "",
        "| budget | policy | cold-start rate | quality-weighted hit rate | mean added latency |",
        "|---|---|---|---|---|",
    ]
    summary = []
    for share in (0.3, 0.5, 0.7):
        budget = int(total_best * share)
        policies: list[Policy] = [
            EdgedPolicy(options, budget, preload=PreloadSettings(), start_loaded=True),
            EdgedPolicy(options, budget, start_loaded=True),
            EdgedPolicy(options, budget, preload=PreloadSettings()),
        ]
        for cls in (LruPolicy, OllamaPolicy, GdsfPolicy):
            policies += [cls(options, budget, "best"), cls(options, budget, "smallest")]
        for pick in ("best", "smallest"):
            policies.append(BeladyPolicy(options, budget, pick, events))
        results = {p.name: replay(p, events) for p in policies}
        for name, r in results.items():
            lines.append(
                f"| {share:.0%} | {name} | {r['cold_rate']:.4f} | {r['qwhr']:.4f} | "
                f"{r['added_ms']:.2f} ms |"
            )
        baselines = {
            k: v["qwhr"] for k, v in results.items() if not k.startswith(("edged", "Belady"))
        }
        best_name = max(baselines, key=lambda k: baselines[k])
        ratio = results["edged"]["qwhr"] / baselines[best_name]
        worst = min(baselines.values())
        summary.append(
            f"| {share:.0%} | {results['edged']['qwhr']:.4f} | "
            f"{results['edged (no preloading)']['qwhr']:.4f} | {best_name} "
            f"{baselines[best_name]:.4f} | {ratio:.3f} x | "
            f"{'yes' if results['edged']['qwhr'] >= worst else 'no'} |"
        )
    lines += [
        "",
        "| budget | edged QWHR | edged without preloading | best baseline QWHR | edged / best "
        "| never below a baseline |",
        "|---|---|---|---|---|---|",
        *summary,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
