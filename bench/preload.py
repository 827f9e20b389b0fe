"""Predictive pre-loading in simulated time: edged (forecasters + residency) against LRU, Ollama's
5-minute keep-alive, GDSF and the hybrid idle-time histogram policy alone (ATC'20).

Same traces and measured variant costs as bench/residency.py (12 models; Zipf with drift, daily
cycle, bursts, 3 timers, 2 pipelines). Per budget (30/50/70% of the best-variant total): cold-start
rate, quality-weighted hit rate, wasted-preload share (preloads that left memory unused).

    .venv/bin/python bench/preload.py [--days 2] [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from residency import best_total, measured_portfolio, standard_trace  # noqa: E402

from edged.settings import PreloadSettings  # noqa: E402
from edged.sim.baselines import (  # noqa: E402
    BeladyPolicy,
    HybridHistogramPolicy,
    LruPolicy,
    OllamaPolicy,
)
from edged.sim.edged_policy import EdgedPolicy  # noqa: E402
from edged.sim.policy import Policy, replay  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=float, default=2.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "preload.md"))
    args = parser.parse_args()

    options = measured_portfolio()
    models = sorted(options)
    total = best_total(options)
    lines = [
        f"{args.days:g} simulated days per trace, seeds {args.seeds}; medians over the seeds. "
        f"Best-variant total {total / 1e6:.1f} MB.",
        "",
        "| budget | policy | cold-start rate | quality-weighted hit rate | preloads "
        "| wasted share |",
        "|---|---|---|---|---|---|",
    ]
    targets = []
    for share in (0.3, 0.5, 0.7):
        budget = int(total * share)
        runs: dict[str, list[dict[str, float]]] = {}
        for seed in args.seeds:
            events = standard_trace(models, args.days, seed)
            policies: list[Policy] = [
                EdgedPolicy(options, budget, preload=PreloadSettings(), start_loaded=True),
                EdgedPolicy(options, budget, start_loaded=True),
                EdgedPolicy(options, budget, preload=PreloadSettings()),
            ]
            for cls in (LruPolicy, OllamaPolicy, HybridHistogramPolicy):
                policies += [cls(options, budget, "best"), cls(options, budget, "smallest")]
            policies += [BeladyPolicy(options, budget, p, events) for p in ("best", "smallest")]
            for p in policies:
                runs.setdefault(p.name, []).append(replay(p, events))
        med = {
            name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            for name, rs in runs.items()
        }
        for name, r in med.items():
            lines.append(
                f"| {share:.0%} | {name} | {r['cold_rate']:.4f} | {r['qwhr']:.4f} | "
                f"{r['preloads']:.0f} | {r['wasted_share']:.2f} |"
            )
        if share == 0.5:
            e = med["edged"]
            lru = min(med["LRU (best)"]["cold_rate"], med["LRU (smallest)"]["cold_rate"])
            hybrid = min(
                med["hybrid histogram (best)"]["cold_rate"],
                med["hybrid histogram (smallest)"]["cold_rate"],
            )
            targets = [
                ("cold starts <= 0.5 x LRU (better of best/smallest)", e["cold_rate"] / lru, 0.5),
                (
                    "cold starts <= 0.8 x hybrid histogram (better of the two)",
                    e["cold_rate"] / hybrid,
                    0.8,
                ),
                ("wasted preloads <= 30% of preloads", e["wasted_share"], 0.3),
            ]
    lines += ["", "At the 50% budget:", "", "| target | measured | met |", "|---|---|---|"]
    for text, value, limit in targets:
        lines.append(f"| {text} | {value:.3f} | {'yes' if value <= limit else '**no**'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
