"""`edged serve | import | models | infer | demo`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edged import config as config_mod
from edged.errors import EdgedError

DEFAULT_CONFIG = "/etc/edged/edged.toml"


def _config(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(args.config)


def _address(args: argparse.Namespace) -> str:
    if getattr(args, "address", None):
        return str(args.address)
    cfg = _config(args)
    if cfg.server.unix_socket:
        return f"unix:{cfg.server.unix_socket}"
    return cfg.server.tcp


def cmd_serve(args: argparse.Namespace) -> int:
    from edged.daemon import serve

    cfg = _config(args)
    serve(cfg)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from edged.portfolio.portfolio import variant_key
    from edged.runtime.probe import probe_and_record, stored_result
    from edged.store.store import ModelStore

    cfg = _config(args)
    store = ModelStore(cfg.store.path)
    manifest = store.import_dir(Path(args.dir), activate=not args.no_activate)
    print(
        f"imported {manifest.name} version {manifest.version} ({len(manifest.variants)} variants)"
    )
    if args.no_validate:
        return 0
    for variant in manifest.variants:
        result = stored_result(store, variant) or asyncio.run(
            probe_and_record(store, variant, cfg.validation.timeout_seconds)
        )
        verdict = "usable" if result.usable else f"UNUSABLE: {result.reason}"
        print(f"  {variant.id:<8} {variant_key(variant)[:12]}  {verdict}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import grpc

    from edged.api import portfolio_pb2, portfolio_pb2_grpc

    with grpc.insecure_channel(_address(args)) as channel:
        stub = portfolio_pb2_grpc.PortfolioStub(channel)
        response = stub.ListModels(portfolio_pb2.ListModelsRequest(), timeout=args.timeout)
    if args.json:
        from google.protobuf import json_format

        print(json_format.MessageToJson(response))
        return 0
    b = response.budget
    print(
        f"budget {b.bytes / 2**20:.1f} MiB ({b.limited_by}), "
        f"resident {b.accounted_bytes / 2**20:.1f} MiB, "
        f"available {b.available_bytes / 2**20:.0f} MiB"
    )
    for model in response.models:
        pinned = "  pinned" if model.pinned else ""
        print(
            f"{model.name}  active={model.active_version}  {model.state}  "
            f"rate={model.predicted_rate:.3f}/s{pinned}  {model.reason}"
        )
        for version in model.versions:
            marker = "*" if version.active else " "
            for v in version.variants:
                resident = f"{v.resident_bytes / 2**20:.1f} MiB" if v.resident_bytes else ""
                print(
                    f"  {marker}{version.version:<6} {v.id:<8} {v.format:<5} "
                    f"q={v.quality:.3f} {v.state:<12} {resident:<10} {v.reason}"
                )
    return 0


def cmd_portfolio(args: argparse.Namespace) -> int:
    """pin / unpin / evict / load: one call on edged.v1.Portfolio."""
    import grpc

    from edged.api import portfolio_pb2 as pb
    from edged.api import portfolio_pb2_grpc as pb_grpc

    with grpc.insecure_channel(_address(args)) as channel:
        stub = pb_grpc.PortfolioStub(channel)
        if args.command == "pin":
            stub.Pin(pb.PinRequest(model=args.model), timeout=args.timeout)
        elif args.command == "unpin":
            stub.Unpin(pb.PinRequest(model=args.model), timeout=args.timeout)
        elif args.command == "evict":
            stub.Evict(pb.EvictRequest(model=args.model), timeout=args.timeout)
        else:
            r = stub.Load(
                pb.LoadRequest(model=args.model, variant=args.variant or ""), timeout=args.timeout
            )
            print(
                f"{args.model} version {r.version} variant {r.variant} "
                f"({r.resident_bytes / 2**20:.1f} MiB)"
            )
            return 0
    print(f"{args.command} {args.model}: done")
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    import grpc
    import numpy as np

    from edged.api import inference_pb2 as pb
    from edged.api import inference_pb2_grpc as pb_grpc
    from edged.grpc import convert
    from edged.runtime.base import (
        DATATYPE_TO_NUMPY,
        TensorSpec,
        example_inputs,
    )

    with grpc.insecure_channel(_address(args)) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name=args.model, model_version=args.version)
        if args.text is not None:
            arrays: dict[str, Any] = {"text_input": np.array([args.text.encode()], dtype=object)}
            request.parameters["max_tokens"].int64_param = args.max_tokens
        else:
            meta = stub.ModelMetadata(
                pb.ModelMetadataRequest(name=args.model), timeout=args.timeout
            )
            specs = tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in meta.inputs)
            arrays = example_inputs(specs)
            for item in args.input or []:
                name, _, value = item.partition("=")
                spec = next((s for s in specs if s.name == name), None)
                if spec is None:
                    raise EdgedError(f"--input {name}: the model has no such input")
                arrays[name] = np.asarray(json.loads(value), dtype=DATATYPE_TO_NUMPY[spec.datatype])
        convert.add_inputs(request, arrays)
        response = stub.ModelInfer(request, timeout=args.timeout)
    print(
        f"model {response.model_name} version {response.model_version} "
        f"variant {response.parameters['edged_variant'].string_param}"
    )
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if tensor.datatype == "BYTES":
            values = convert.deserialize_bytes(raw, int(np.prod(tensor.shape)), tensor.name)
            print(f"{tensor.name}: {[v.decode(errors='replace') for v in values]}")
        else:
            array = np.frombuffer(raw, DATATYPE_TO_NUMPY[tensor.datatype]).reshape(tensor.shape)
            print(
                f"{tensor.name} {tensor.datatype} {list(tensor.shape)}: "
                f"{np.array2string(array, threshold=20, precision=4)}"
            )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edged.demo import build_demo
    from edged.store.store import ModelStore

    cfg = _config(args)
    out = Path(args.out) if args.out else cfg.store.path.parent / "demo-src"
    store = ModelStore(cfg.store.path)
    for model_dir in build_demo(out):
        manifest = json.loads((model_dir / "manifest.json").read_text())
        name, version = manifest["name"], manifest["version"]
        if version in store.versions(name):
            # Versions are immutable, and a rebuilt demo need not be byte-identical (quantizer
            # versions): the one already imported stays.
            print(f"demo model {name} version {version} is already in the store; kept")
            continue
        ns = argparse.Namespace(
            config=args.config, dir=str(model_dir), no_activate=False, no_validate=False
        )
        cmd_import(ns)
    return 0


def cmd_trace_synth(args: argparse.Namespace) -> int:
    from edged.trace import DAY, TraceSpec, synthesize, write_csv

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
    from edged.trace import read_csv

    try:
        events = read_csv(Path(args.trace))
    except (OSError, ValueError) as exc:
        raise EdgedError(f"trace {args.trace}: {exc}") from None
    if args.simulate:
        from edged.replay import simulate, store_options
        from edged.simulate import SimPreload
        from edged.store.store import ModelStore

        cfg = _config(args)
        options = store_options(ModelStore(cfg.store.path))
        missing = sorted({m for _, m in events} - set(options))
        if len(missing) == len({m for _, m in events}):
            raise EdgedError(
                f"trace {args.trace}: none of its models has a validated variant in the store "
                f"{cfg.store.path} (start the daemon once, or `edged import` them)"
            )
        if missing:
            print(f"not in the store (or never validated), skipped: {', '.join(missing)}")
        budget = cfg.memory.budget.resolve()
        p = cfg.preload
        preload = SimPreload(
            p.interval_seconds, p.lead_seconds, p.min_probability, p.transition_window_seconds
        )
        print(f"simulated replay, budget {budget / 2**20:.1f} MiB (memory.budget)")
        print(f"{'policy':40} {'cold rate':>10} {'QWHR':>8} {'added ms':>9} {'preloads':>9}")
        for name, r in simulate(options, events, budget, preload):
            print(
                f"{name:40} {r['cold_rate']:10.4f} {r['qwhr']:8.4f} {r['added_ms']:9.2f} "
                f"{int(r['preloads']):9d}"
            )
        return 0
    from edged.replay import replay_against_daemon, summarize

    results = asyncio.run(replay_against_daemon(_address(args), events, args.speed, args.timeout))
    print(summarize(results))
    return 0 if all(r.ok for r in results) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edged", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=DEFAULT_CONFIG, help="TOML config file")

    def with_client(p: argparse.ArgumentParser) -> None:
        with_config(p)
        p.add_argument(
            "--address",
            help="daemon address (unix:/path or host:port); default: the config's unix socket",
        )
        p.add_argument("--timeout", type=float, default=120.0)

    p = sub.add_parser("serve", help="run the daemon in the foreground")
    with_config(p)
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("import", help="add a model version from a directory with manifest.json")
    with_config(p)
    p.add_argument("dir")
    p.add_argument("--no-activate", action="store_true", help="do not make it the active version")
    p.add_argument("--no-validate", action="store_true", help="skip the subprocess validation")
    p.set_defaults(fn=cmd_import)

    p = sub.add_parser("models", help="models, versions, variants and their state (via daemon)")
    with_client(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_models)

    for name, text in (
        ("pin", "hold a model's variant: never evicted, downgraded or swapped"),
        ("unpin", "let the residency policy manage a model again"),
        ("evict", "unload a model now (it loads again on demand)"),
        ("load", "load a model now, optionally a given variant"),
    ):
        p = sub.add_parser(name, help=text)
        with_client(p)
        p.add_argument("model")
        if name == "load":
            p.add_argument("--variant", help="variant id (default: the policy's choice)")
        p.set_defaults(fn=cmd_portfolio)

    p = sub.add_parser("infer", help="one inference call, for a quick manual check")
    with_client(p)
    p.add_argument("model")
    p.add_argument("--version", default="")
    p.add_argument("--text", help="prompt for a GGUF model")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--input", action="append", help="NAME=JSON array (default: random input)")
    p.set_defaults(fn=cmd_infer)

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

    from edged.update.cli import register as register_update_commands

    register_update_commands(sub, with_config)

    p = sub.add_parser("demo", help="build the demo portfolio offline and import it")
    with_config(p)
    p.add_argument("--out", help="where to write the model sources (default: beside the store)")
    p.set_defaults(fn=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.fn(args))
    except EdgedError as exc:
        print(f"edged: {exc.message}", file=sys.stderr)
        return 2
    except Exception as exc:
        import grpc

        if isinstance(exc, grpc.RpcError):
            print(f"edged: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        raise
