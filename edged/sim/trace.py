"""Synthetic request traces: what an edge box's clients look like, seeded.

A trace is a time-ordered list of (seconds, model). Written as CSV with a header ``time,model``.
Components, all optional by weight:

- Zipf popularity over the models (exponent ``zipf_s``), whose ranks drift: every
  ``drift_seconds`` two random ranks swap;
- a daily cycle: the background rate follows 1 + ``daily_amplitude`` * sin(2 pi t / 1 day);
- bursts: now and then one model gets ``burst_size`` requests within a minute;
- periodic timers: some models are called every P seconds (with small jitter), like cron jobs;
- pipelines: a request to a pipeline head is followed by its next stage within 200 ms
  (detector -> classifier -> recognizer).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import random
from collections.abc import Sequence
from pathlib import Path

DAY = 86400.0


@dataclasses.dataclass(frozen=True)
class TraceSpec:
    models: tuple[str, ...]
    duration: float = 2 * DAY
    seed: int = 0
    base_rate: float = 0.08  # background requests per second, before the daily cycle
    zipf_s: float = 1.1
    daily_amplitude: float = 0.7
    drift_seconds: float = 6 * 3600.0
    bursts_per_day: float = 8.0
    burst_size: int = 40
    timers: tuple[tuple[str, float], ...] = ()  # (model, period seconds)
    pipelines: tuple[tuple[str, ...], ...] = ()  # stages; the first is the head
    pipeline_follow: float = 0.9  # probability that each next stage follows


def synthesize(spec: TraceSpec) -> list[tuple[float, str]]:
    rng = random.Random(spec.seed)
    models = list(spec.models)
    ranks = models[:]
    rng.shuffle(ranks)
    weights = [1.0 / (i + 1) ** spec.zipf_s for i in range(len(ranks))]
    events: list[tuple[float, str]] = []
    heads = {p[0]: p for p in spec.pipelines}

    # Background: a Poisson process thinned by the daily cycle, popularity by Zipf rank.
    peak = spec.base_rate * (1 + spec.daily_amplitude)
    t, next_drift = 0.0, spec.drift_seconds
    while True:
        t += rng.expovariate(peak)
        if t >= spec.duration:
            break
        while t >= next_drift:
            i, j = rng.sample(range(len(ranks)), 2)
            ranks[i], ranks[j] = ranks[j], ranks[i]
            next_drift += spec.drift_seconds
        cycle = 1 + spec.daily_amplitude * math.sin(2 * math.pi * t / DAY)
        if rng.random() * (1 + spec.daily_amplitude) <= cycle:
            events.append((t, rng.choices(ranks, weights)[0]))

    # Bursts.
    t = 0.0
    while spec.bursts_per_day > 0:
        t += rng.expovariate(spec.bursts_per_day / DAY)
        if t >= spec.duration:
            break
        model = rng.choice(models)
        events += [(t + rng.random() * 60.0, model) for _ in range(spec.burst_size)]

    # Timers.
    for model, period in spec.timers:
        t = rng.random() * period
        while t < spec.duration:
            events.append((t, model))
            t += period + rng.gauss(0, period * 0.01)

    # Pipelines: every head request (background, burst or timer) may pull its stages along.
    followers = []
    for when, model in events:
        stages = heads.get(model)
        if stages is None:
            continue
        t = when
        for stage in stages[1:]:
            if rng.random() > spec.pipeline_follow:
                break
            t += rng.uniform(0.02, 0.2)
            followers.append((t, stage))
    events += followers
    events = [(t, m) for t, m in events if t < spec.duration]
    events.sort()
    return events


def write_csv(events: Sequence[tuple[float, str]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["time", "model"])
        for t, model in events:
            writer.writerow([f"{t:.3f}", model])


def read_csv(path: Path) -> list[tuple[float, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"time", "model"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a CSV header with 'time' and 'model'")
        events = []
        for line, row in enumerate(reader, start=2):
            try:
                events.append((float(row["time"]), str(row["model"])))
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: bad row {row!r}") from None
    events.sort()
    return events
