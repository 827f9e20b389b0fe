"""`edged label | quality`: delayed labels, and what they measured (through the daemon)."""

from __future__ import annotations

import argparse
import math
from typing import Any

from edged.cli.common import address, with_client
from edged.errors import EdgedError


def _stub(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    import grpc

    from edged.api import quality_pb2 as pb
    from edged.api import quality_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(address(args))
    return channel, pb, pb_grpc.QualityStub(channel)


def cmd_label(args: argparse.Namespace) -> int:
    try:
        labels = [int(x) for x in args.labels.split(",")]
    except ValueError:
        raise EdgedError(
            f"labels {args.labels!r}: expected class numbers, comma-separated"
        ) from None
    channel, pb, stub = _stub(args)
    with channel:
        r = stub.Label(
            pb.LabelRequest(model=args.model, request_id=args.request_id, labels=labels),
            timeout=args.timeout,
        )
    verdict = "right" if r.correct else "wrong"
    print(
        f"{args.model} {args.request_id}: {verdict} "
        f"(version {r.version}, {r.variant}, stratum {r.stratum})"
    )
    return 0


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.1%}"


def cmd_quality(args: argparse.Namespace) -> int:
    channel, pb, stub = _stub(args)
    with channel:
        r = stub.Report(pb.ReportRequest(model=args.model), timeout=args.timeout)
    if r.cascade:
        print(f"cascade: {r.cascade}")
    if r.strata_edges:
        print(
            "strata (confidence cut points, hardest first): "
            + ", ".join(f"{e:.3f}" for e in r.strata_edges)
        )
    print(
        f"{'version':<8} {'variant':<24} {'stratum':>7} {'labels':>7} {'accuracy':>9} "
        f"{'ECE':>7} {'quality':>8}"
    )
    for row in r.rows:
        stratum = "all" if row.stratum == -1 else str(row.stratum)
        quality = "" if math.isnan(row.measured_quality) else f"{row.measured_quality:.4f}"
        ece = "-" if math.isnan(row.ece) else f"{row.ece:.3f}"
        print(
            f"{row.version:<8} {row.variant:<24} {stratum:>7} {row.labels:>7} "
            f"{_pct(row.accuracy):>9} {ece:>7} {quality:>8}"
        )
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("label", help="report the true class(es) of a request answered earlier")
    with_client(p)
    p.add_argument("model")
    p.add_argument("request_id")
    p.add_argument("labels", help="class per row of the request, comma-separated")
    p.set_defaults(fn=cmd_label)

    p = sub.add_parser("quality", help="accuracy and calibration measured from labels")
    with_client(p)
    p.add_argument("model")
    p.set_defaults(fn=cmd_quality)
