"""`edged fleet publish | tag | rollout | status`: the controller's side of a fleet."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from edged.errors import EdgedError, ErrorCode

T = TypeVar("T")


def _registry(args: argparse.Namespace) -> Any:
    from edged.fleet.oci import Credentials, Registry

    return Registry(
        args.registry,
        Credentials(
            os.environ.get("EDGED_REGISTRY_USERNAME", ""),
            os.environ.get("EDGED_REGISTRY_PASSWORD", ""),
        ),
        Path(args.registry_ca) if args.registry_ca else None,
    )


def _broker(args: argparse.Namespace, identifier: str) -> Any:
    from edged.fleet.mqtt import client_for

    return client_for(
        args.broker,
        identifier,
        os.environ.get("EDGED_BROKER_USERNAME", ""),
        os.environ.get("EDGED_BROKER_PASSWORD", ""),
        args.broker_ca,
    )


def _on_broker(args: argparse.Namespace, run: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``run``; a broker that cannot be reached (refused, TLS, credentials) is an error
    naming it, not a traceback."""
    import aiomqtt

    try:
        return asyncio.run(run())
    except aiomqtt.MqttError as e:
        raise EdgedError(f"broker {args.broker}: {e}", ErrorCode.UNAVAILABLE) from None


def cmd_publish(args: argparse.Namespace) -> int:
    from edged.fleet.publish import publish

    async def run() -> Any:
        async with _registry(args) as registry:
            with tempfile.TemporaryDirectory(prefix="edged-publish-") as work:
                return await publish(
                    registry,
                    args.prefix,
                    Path(args.model_dir),
                    Path(args.key),
                    Path(work),
                    channels=tuple(args.channel or ()),
                    keep=args.keep,
                    roots=tuple(Path(r) for r in args.root or ()),
                )

    done = asyncio.run(run())
    print(f"{done.repository} version {done.version}: {done.digest} tagged {', '.join(done.tags)}")
    for base, size in sorted(done.patch_bytes.items()):
        print(f"  a node at version {base} fetches {size} bytes")
    print(f"  a node at none of them fetches {done.whole_bytes} bytes (whole files)")
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    from edged.fleet.publish import repository_of, tag

    async def run() -> str:
        async with _registry(args) as registry:
            return str(
                await tag(
                    registry, repository_of(args.prefix, args.model), args.version, args.channel
                )
            )

    print(f"{args.model}:{args.channel} -> version {args.version} ({asyncio.run(run())})")
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    from edged.fleet import rollout as ro

    shares = ro.parse_waves(args.waves)
    rule = ro.AbortRule.parse(args.abort_if)

    async def run() -> ro.RolloutResult:
        view = ro.FleetView()
        async with _broker(args, f"edged-controller-{os.getpid()}") as client:
            pump = await ro.follow(client, view, args.settle)
            try:
                return await ro.rollout(
                    client,
                    view,
                    args.model,
                    args.version,
                    shares,
                    rule,
                    min_reports=args.min_reports,
                    group=args.group,
                    wave_timeout=args.wave_timeout,
                    say=lambda line: print(line, flush=True),
                )
            finally:
                pump.cancel()

    result = _on_broker(args, run)
    counts: dict[str, int] = {}
    for outcome in result.outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    print(f"rollout {result.state}: " + ", ".join(f"{n} {o}" for o, n in sorted(counts.items())))
    if result.reason:
        print(f"  {result.reason}")
    for device in result.failed:
        print(f"  failed: {device}: {result.outcomes[device]}")
    return {"done": 0, "paused": 3}.get(result.state, 1)


def cmd_status(args: argparse.Namespace) -> int:
    from edged.fleet import rollout as ro

    async def run() -> ro.FleetView:
        view = ro.FleetView()
        async with _broker(args, f"edged-status-{os.getpid()}") as client:
            pump = await ro.follow(client, view, args.settle)
            pump.cancel()
        return view

    view = _on_broker(args, run)
    rows = ro.status_table(view, args.model or "")
    if args.json:
        json.dump(
            [{"model": m, "version": v, "state": s, "nodes": n} for m, v, s, n in rows],
            sys.stdout,
            indent=1,
        )
        print()
        return 0
    offline = sum(1 for d in view.reports if not view.online.get(d, True))
    print(f"{len(view.reports)} nodes reporting ({offline} offline)")
    for model, version, state, nodes in rows:
        print(f"  {model:<20} {version:<10} {state:<40} {nodes:>6}")
    return 0


def register(sub: Any) -> None:
    fleet = sub.add_parser("fleet", help="publish to a registry, roll out over MQTT")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", required=True)

    def registry_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--registry", required=True, help="https://host[:port] of the registry")
        p.add_argument("--prefix", default="edged", help="repositories are PREFIX/MODEL")
        p.add_argument("--registry-ca", help="CA certificate of the registry (a private CA)")

    p = fleet_sub.add_parser("publish", help="publish a model version (whole files + patches)")
    p.add_argument("model_dir", help="the version's directory (manifest.json and its files)")
    p.add_argument("--key", required=True, help="ed25519 private key (edged keygen)")
    p.add_argument("--channel", action="append", help="also tag it (e.g. stable); repeatable")
    p.add_argument("--keep", type=int, default=3, help="patches from the last K versions")
    p.add_argument(
        "--root", action="append", help="a root document nodes should move to first (repeat)"
    )
    registry_args(p)
    p.set_defaults(fn=cmd_publish)

    p = fleet_sub.add_parser("tag", help="point a channel tag at a published version")
    p.add_argument("model")
    p.add_argument("version")
    p.add_argument("channel")
    registry_args(p)
    p.set_defaults(fn=cmd_tag)

    def broker_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--broker", required=True, help="mqtt[s]://host:port")
        p.add_argument("--settle", type=float, default=1.0, help="seconds to read the fleet")
        p.add_argument("--broker-ca", help="CA certificate of the broker (a private CA)")

    p = fleet_sub.add_parser("rollout", help="roll a version out in waves, abort on failures")
    p.add_argument("model")
    p.add_argument("version")
    p.add_argument("--waves", default="1%,10%,50%,100%")
    p.add_argument("--abort-if", default="failed>2%", help="failed>N%% or failed>N")
    p.add_argument("--min-reports", type=int, default=1, help="a wave needs this many outcomes")
    p.add_argument("--wave-timeout", type=float, default=900.0, help="seconds per wave")
    p.add_argument("--group", default="", help="only nodes of this group")
    broker_args(p)
    p.set_defaults(fn=cmd_rollout)

    p = fleet_sub.add_parser("status", help="how many nodes are where, per version and state")
    p.add_argument("model", nargs="?")
    p.add_argument("--json", action="store_true")
    broker_args(p)
    p.set_defaults(fn=cmd_status)
