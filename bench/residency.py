"""Residency policies replayed on a synthetic trace in simulated time.

Per-variant memory and load time are measured once, by edged's own subprocess probe, on the demo
portfolio plus three mid-size MLP families (fp32/int8, 8.4 MB of fp32 weights each). The
simulated portfolio has 12 models: two copies of each of those six measured families. Budgets
are 30/50/70% of the portfolio's best-variant (fp32/f16) bytes.

edged's policy is the daemon's own code (edged/portfolio/residency.py: DecayedRate, choose_load,
plan, upgrade_target). Baselines, each run twice (always the best variant; always the smallest),
since today's servers serve one file per model:

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
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edged.demo import build_demo  # noqa: E402
from edged.portfolio.residency import (  # noqa: E402
    DecayedRate,
    Option,
    Resident,
    ScoringWeights,
    choose_load,
    upgrade_target,
)
from edged.runtime.probe import probe  # noqa: E402
from edged.store.manifest import loads  # noqa: E402
from edged.trace import DAY, TraceSpec, synthesize  # noqa: E402
from tests.portfolios import mlp_family  # noqa: E402

Options = dict[str, list[Option]]  # model -> usable variants


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


class Policy:
    name = ""

    def __init__(self, options: Options, budget: int) -> None:
        self.options = options
        self.budget = budget
        self.resident: dict[str, Option] = {}

    def used(self) -> int:
        return sum(o.bytes for o in self.resident.values())

    def request(self, t: float, model: str) -> tuple[bool, float, float]:
        """(served warm, quality of the serving variant, added latency seconds)."""
        raise NotImplementedError


class EdgedPolicy(Policy):
    name = "edged"

    def __init__(
        self, options: Options, budget: int, weights: ScoringWeights | None = None
    ) -> None:
        super().__init__(options, budget)
        self.w = weights or ScoringWeights()
        self.rates = {m: DecayedRate(self.w.half_life_seconds) for m in options}
        self.next_tick = 0.0

    def predicted(self, model: str, t: float) -> float:
        return self.rates[model].rate(t) * self.w.horizon_seconds

    def residents(self, t: float, exclude: str) -> list[Resident]:
        out = []
        for m, current in self.resident.items():
            if m == exclude:
                continue
            smaller = tuple(o for o in self.options[m] if o.bytes < current.bytes)
            out.append(Resident(m, current, smaller, self.predicted(m, t)))
        return out

    def tick(self, t: float) -> None:
        """The daemon's periodic job: upgrade a busy, downgraded model when memory allows."""
        for m, current in sorted(self.resident.items()):
            target = upgrade_target(
                current, self.options[m], self.budget - self.used(), self.predicted(m, t), 1.0
            )
            if target is not None:
                self.resident[m] = target
                return

    def request(self, t: float, model: str) -> tuple[bool, float, float]:
        if t >= self.next_tick:
            self.tick(t)
            self.next_tick = t + 1.0
        self.rates[model].observe(t)
        current = self.resident.get(model)
        if current is not None:
            return True, current.quality, 0.0
        choice = choose_load(
            self.options[model],
            self.budget - self.used(),
            self.residents(t, model),
            self.predicted(model, t),
            self.w,
        )
        assert not isinstance(choice, list), choice
        option, actions = choice
        for action in actions:
            if action.kind == "evict":
                del self.resident[action.model]
            else:
                self.resident[action.model] = next(
                    o for o in self.options[action.model] if o.variant == action.to
                )
        self.resident[model] = option
        return False, option.quality, option.load_seconds


class CachePolicy(Policy):
    """One fixed variant per model; evict by ``victim_key`` (smallest first) until it fits."""

    def __init__(self, options: Options, budget: int, pick: str) -> None:
        super().__init__(options, budget)
        chooser: Callable[[list[Option]], Option] = (
            (lambda os: max(os, key=lambda o: (o.quality, -o.bytes)))
            if pick == "best"
            else (lambda os: min(os, key=lambda o: (o.bytes, -o.quality)))
        )
        self.fixed = {m: chooser(os) for m, os in options.items()}
        self.name = f"{self.name} ({pick})"
        self.last_use: dict[str, float] = {}

    def victim_key(self, model: str, t: float) -> float:
        return self.last_use[model]

    def on_evict(self, model: str) -> None:
        pass

    def before(self, t: float) -> None:
        pass

    def request(self, t: float, model: str) -> tuple[bool, float, float]:
        self.before(t)
        option = self.fixed[model]
        warm = model in self.resident
        self.touch(model, t)
        if warm:
            return True, option.quality, 0.0
        while self.used() + option.bytes > self.budget and self.resident:
            victim = min(self.resident, key=lambda m: self.victim_key(m, t))
            del self.resident[victim]
            self.on_evict(victim)
        self.resident[model] = option
        return False, option.quality, option.load_seconds

    def touch(self, model: str, t: float) -> None:
        self.last_use[model] = t


class LruPolicy(CachePolicy):
    name = "LRU"


class OllamaPolicy(CachePolicy):
    name = "Ollama 5-min keep-alive"
    KEEP_ALIVE = 300.0

    def before(self, t: float) -> None:
        for m in [m for m in self.resident if self.last_use[m] + self.KEEP_ALIVE < t]:
            del self.resident[m]

    def victim_key(self, model: str, t: float) -> float:
        return self.last_use[model] + self.KEEP_ALIVE  # the soonest to expire goes first


class GdsfPolicy(CachePolicy):
    name = "GDSF"

    def __init__(self, options: Options, budget: int, pick: str) -> None:
        super().__init__(options, budget, pick)
        self.clock = 0.0
        self.freq: dict[str, int] = {}
        self.priority: dict[str, float] = {}

    def touch(self, model: str, t: float) -> None:
        super().touch(model, t)
        self.freq[model] = self.freq.get(model, 0) + 1
        o = self.fixed[model]
        self.priority[model] = self.clock + self.freq[model] * o.load_seconds / max(o.bytes, 1)

    def victim_key(self, model: str, t: float) -> float:
        return self.priority[model]

    def on_evict(self, model: str) -> None:
        self.clock = self.priority[model]


def replay(policy: Policy, events: list[tuple[float, str]]) -> dict[str, float]:
    cold = 0
    weighted = 0.0
    added = 0.0
    for t, model in events:
        warm, quality, latency = policy.request(t, model)
        if warm:
            weighted += quality
        else:
            cold += 1
            added += latency
    n = len(events)
    return {"cold_rate": cold / n, "qwhr": weighted / n, "added_ms": added / n * 1e3}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "residency.md"))
    args = parser.parse_args()

    print("measuring variants (subprocess probe):", flush=True)
    families = measure_families(Path(tempfile.mkdtemp(prefix="edged-residency-")))
    models = [f"m{i:02d}" for i in range(2 * len(families))]
    options = {m: families[i % len(families)] for i, m in enumerate(models)}
    spec = TraceSpec(
        models=tuple(models),
        duration=args.days * DAY,
        seed=args.seed,
        timers=((models[3], 600.0), (models[8], 900.0), (models[10], 3600.0)),
        pipelines=((models[1], models[5], models[9]), (models[4], models[7])),
    )
    events = synthesize(spec)
    total_best = sum(max(o.bytes for o in os) for os in options.values())
    print(
        f"trace: {len(events)} requests over {args.days:g} days, {len(models)} models, "
        f"best-variant total {total_best / 1e6:.1f} MB",
        flush=True,
    )

    lines = [
        f"Trace: seed {args.seed}, {args.days:g} simulated days, {len(events)} requests, "
        f"{len(models)} models (Zipf 1.1 with drift, daily cycle, bursts, 3 timers, "
        "2 pipelines). Best-variant total "
        f"{total_best / 1e6:.1f} MB.",
        "",
        "| budget | policy | cold-start rate | quality-weighted hit rate | mean added latency |",
        "|---|---|---|---|---|",
    ]
    summary = []
    for share in (0.3, 0.5, 0.7):
        budget = int(total_best * share)
        policies: list[Policy] = [EdgedPolicy(options, budget)]
        for cls in (LruPolicy, OllamaPolicy, GdsfPolicy):
            policies += [cls(options, budget, "best"), cls(options, budget, "smallest")]
        results = {p.name: replay(p, events) for p in policies}
        for name, r in results.items():
            lines.append(
                f"| {share:.0%} | {name} | {r['cold_rate']:.4f} | {r['qwhr']:.4f} | "
                f"{r['added_ms']:.2f} ms |"
            )
        baselines = {k: v["qwhr"] for k, v in results.items() if k != "edged"}
        best_name = max(baselines, key=lambda k: baselines[k])
        ratio = results["edged"]["qwhr"] / baselines[best_name]
        summary.append(
            f"| {share:.0%} | {results['edged']['qwhr']:.4f} | {best_name} "
            f"{baselines[best_name]:.4f} | {ratio:.3f} x |"
        )
    lines += [
        "",
        "| budget | edged QWHR | best baseline QWHR | edged / best |",
        "|---|---|---|---|",
        *summary,
    ]
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
