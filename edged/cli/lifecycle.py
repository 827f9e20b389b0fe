"""`edged versions | activate | rollback | lineage`: a model's versions through the daemon."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from edged.cli.common import address, with_client


def _stub(args: argparse.Namespace) -> tuple[Any, Any]:
    import grpc

    from edged.api import lifecycle_pb2 as pb
    from edged.api import lifecycle_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(address(args))
    return channel, (pb, pb_grpc.LifecycleStub(channel))


def _when(since: float) -> str:
    if not since:
        return ""
    return datetime.datetime.fromtimestamp(since, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_versions(args: argparse.Namespace) -> int:
    channel, (pb, stub) = _stub(args)
    with channel:
        response = stub.Versions(pb.VersionsRequest(model=args.model), timeout=args.timeout)
    for v in response.versions:
        marker = "*" if v.serving else " "
        state = v.state + (f" ({v.phase})" if v.phase else "")
        print(f"{marker}{v.version:<8} {state:<24} {_when(v.since):<21} {v.reason}")
        shown = {k: v.figures[k] for k in sorted(v.figures)}
        if shown and args.figures:
            print("           " + ", ".join(f"{k}={x:.4g}" for k, x in shown.items()))
    return 0


def cmd_activate(args: argparse.Namespace) -> int:
    channel, (pb, stub) = _stub(args)
    with channel:
        r = stub.Activate(
            pb.ActivateRequest(model=args.model, version=args.version), timeout=args.timeout
        )
    print(f"{args.model} version {r.version.version}: {r.version.state} ({r.version.reason})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    channel, (pb, stub) = _stub(args)
    with channel:
        r = stub.Rollback(
            pb.RollbackRequest(model=args.model, to=args.to or "", undo=args.undo or ""),
            timeout=args.timeout,
        )
    print(f"{args.model}: version {r.version} serves ({r.reason})")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    """The version graph as a tree: each version under its parent, with what changed."""
    channel, (pb, stub) = _stub(args)
    with channel:
        nodes = stub.Lineage(pb.LineageRequest(model=args.model), timeout=args.timeout).nodes
    children: dict[str, list[Any]] = {}
    known = {n.version for n in nodes}
    for n in nodes:
        children.setdefault(n.parent if n.parent in known else "", []).append(n)

    def draw(parent: str, prefix: str) -> None:
        kids = children.get(parent, [])
        for i, n in enumerate(kids):
            last = i == len(kids) - 1
            branch = "" if not parent else ("└─ " if last else "├─ ")
            serving = " *serving*" if n.serving else ""
            print(f"{prefix}{branch}{n.version}  [{n.state}]{serving}")
            inner = prefix + ("" if not parent else ("   " if last else "│  "))
            for change in n.changes:
                print(f"{inner}{'    ' if not parent else '      '}{change}")
            draw(n.version, inner if parent else "  ")

    draw("", "")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("versions", help="a model's versions, their lifecycle state and why")
    with_client(p)
    p.add_argument("model")
    p.add_argument("--figures", action="store_true", help="the gate and shadow figures too")
    p.set_defaults(fn=cmd_versions)

    p = sub.add_parser("activate", help="promote a stored version (gate, shadow, probation)")
    with_client(p)
    p.add_argument("model")
    p.add_argument("version")
    p.set_defaults(fn=cmd_activate)

    p = sub.add_parser("rollback", help="serve another version, or undo part of the lineage")
    with_client(p)
    p.add_argument("model")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--to", help="the version to serve")
    which.add_argument(
        "--undo", choices=("teacher", "dataset", "compression"), help="the lineage part to undo"
    )
    p.set_defaults(fn=cmd_rollback)

    p = sub.add_parser("lineage", help="the version graph, with what changed at each step")
    with_client(p)
    p.add_argument("model")
    p.set_defaults(fn=cmd_lineage)
