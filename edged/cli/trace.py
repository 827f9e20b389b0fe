"""`edged trace synth | replay`: request traces, against the daemon or its engine simulated."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from edged.cli.common import address, load_settings, with_client
from edged.errors import EdgedError


def cmd_trace_synth(args: argparse.Namespace) -> int:
    from edged.sim.trace import DAY, TraceSpec, synthesize, write_csv

    models = tuple(m for m in args.models.split(",") if m)
    if len(models) < 2:
        raise EdgedError("--models: give at least two model names, comma-separated")
    timers = []
    for item in args.timer or []:
        model, _, period = item.partition(":")
        try:
            timers.append((model, float(period)))
        except ValueError:
            raise EdgedError(f"--timer {item!r}: expected MODEL:SECONDS") from None
    pipelines = tuple(tuple(p.split(",")) for p in args.pipeline or [])
    for name in [m for m, _ in timers] + [m for p in pipelines for m in p]:
        if name not in models:
            raise EdgedError(f"--timer/--pipeline: {name!r} is not one of --models")
    spec = TraceSpec(
        models=models,
        duration=args.days * DAY,
        seed=args.seed,
        base_rate=args.rate,
        timers=tuple(timers),
        pipelines=pipelines,
    )
    events = synthesize(spec)
    write_csv(events, Path(args.out))
    print(f"{len(events)} requests over {args.days:g} days written to {args.out}")
    return 0


def cmd_trace_replay(args: argparse.Namespace) -> int:
    from edged.sim.trace import read_csv

    try:
        events = read_csv(Path(args.trace))
    except (OSError, ValueError) as exc:
        raise EdgedError(f"trace {args.trace}: {exc}") from None
    if args.simulate:
        from edged.sim.replay import simulate, store_options

        cfg = load_settings(args)
        options = store_options(cfg.store.path)
        missing = sorted({m for _, m in events} - set(options))
        if len(missing) == len({m for _, m in events}):
            raise EdgedError(
                f"trace {args.trace}: none of its models has a validated variant in the store "
                f"{cfg.store.path} (start the daemon once, or `edged import` them)"
            )
        if missing:
            print(f"not in the store (or never validated), skipped: {', '.join(missing)}")
        budget = cfg.memory.budget.resolve()
        print(f"simulated replay, budget {budget / 2**20:.1f} MiB (memory.budget)")
        print(f"{'policy':40} {'cold rate':>10} {'QWHR':>8} {'added ms':>9} {'preloads':>9}")
        for name, r in simulate(options, events, budget, cfg.residency, cfg.preload, cfg.pinned()):
            print(
                f"{name:40} {r['cold_rate']:10.4f} {r['qwhr']:8.4f} {r['added_ms']:9.2f} "
                f"{int(r['preloads']):9d}"
            )
        return 0
    from edged.sim.replay import replay_against_daemon, summarize

    results = asyncio.run(replay_against_daemon(address(args), events, args.speed, args.timeout))
    print(summarize(results))
    return 0 if all(r.ok for r in results) else 1


def register(sub: Any) -> None:
    trace = sub.add_parser("trace", help="synthesize or replay request traces (CSV: time,model)")
    trace_sub = trace.add_subparsers(dest="trace_command", required=True)
    p = trace_sub.add_parser("synth", help="write a seeded synthetic trace")
    p.add_argument("--models", required=True, help="comma-separated model names")
    p.add_argument("--days", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate", type=float, default=0.08, help="background requests per second")
    p.add_argument("--timer", action="append", help="MODEL:SECONDS, a periodic client")
    p.add_argument("--pipeline", action="append", help="A,B[,C]: B follows A within 200 ms")
    p.add_argument("-o", "--out", required=True)
    p.set_defaults(fn=cmd_trace_synth)
    p = trace_sub.add_parser("replay", help="replay a trace against the daemon or the policy")
    with_client(p)
    p.add_argument("trace")
    p.add_argument("--speed", type=float, default=1.0, help="time compression (100 = 100x)")
    p.add_argument(
        "--simulate",
        action="store_true",
        help="replay in simulated time against the policy code (measured costs from the store)",
    )
    p.set_defaults(fn=cmd_trace_replay)
    p = trace_sub.add_parser(
        "digits", help="replay the digits demo's held-out split with delayed labels"
    )
    with_client(p)
    p.add_argument("--model", default="digits")
    p.add_argument("--heldout", help="heldout.npz (default: the demo's, beside the store)")
    p.add_argument("--count", type=int, default=10_000, help="at most this many samples")
    p.add_argument("--delay", type=float, default=0.5, help="seconds before the labels come")
    p.set_defaults(fn=cmd_trace_digits)


def cmd_trace_digits(args: argparse.Namespace) -> int:
    """Replay the digits demo's held-out split as requests with ids, then report each one's
    true label (as an application would, later): what answered, how often the cascade
    escalated, and the accuracy the labels measured."""
    import time

    import grpc
    import numpy as np

    from edged.adapters.grpc import convert
    from edged.api import inference_pb2 as pb
    from edged.api import inference_pb2_grpc as pb_grpc
    from edged.api import quality_pb2 as qpb
    from edged.api import quality_pb2_grpc as qpb_grpc

    path = (
        Path(args.heldout)
        if args.heldout
        else (load_settings(args).store.path.parent / "demo-src" / "digits" / "heldout.npz")
    )
    try:
        data = np.load(path)
        xs, ys = data["x"][: args.count], data["y"][: args.count]
    except (OSError, KeyError, ValueError) as exc:
        raise EdgedError(
            f"{path}: not the digits held-out split ({exc}); see `edged demo`"
        ) from None
    answered: dict[str, int] = {}
    escalated = right = 0
    tag = f"{int(time.time())}"
    with grpc.insecure_channel(address(args)) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        ids = []
        for i, x in enumerate(xs):
            request = pb.ModelInferRequest(model_name=args.model, id=f"digits-{tag}-{i}")
            convert.add_inputs(request, {"input": x[None, :].astype(np.float32)})
            response = stub.ModelInfer(request, timeout=args.timeout)
            variant = response.parameters["edged_variant"].string_param
            answered[variant] = answered.get(variant, 0) + 1
            escalated += response.parameters["edged_escalated"].bool_param
            ids.append(request.id)
        time.sleep(args.delay)
        labels = qpb_grpc.QualityStub(channel)
        for request_id, y in zip(ids, ys, strict=True):
            result = labels.Label(
                qpb.LabelRequest(model=args.model, request_id=request_id, labels=[int(y)]),
                timeout=args.timeout,
            )
            right += result.correct
    n = max(len(ids), 1)
    print(f"{len(ids)} held-out digits sent to {args.model}, then labelled")
    print(
        "answered by: " + ", ".join(f"{v} {c} ({c / n:.1%})" for v, c in sorted(answered.items()))
    )
    print(f"escalated: {escalated} ({escalated / n:.1%}); accuracy {right / n:.2%}")
    print(f"(`edged quality {args.model}` and `edged models` show it per variant and stratum)")
    return 0
