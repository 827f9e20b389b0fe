"""`edged`: the daemon and its tools. One module per group of commands: local.py (serve,
import, demo), client.py (commands against a running daemon), lifecycle.py (versions, activate,
rollback, lineage), trace.py, update.py (patches, keys, signed updates, push), fleet.py
(publish to a registry, roll out over MQTT)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from edged.cli import client, fleet, lifecycle, local, quality, trace, update
from edged.cli.common import with_config
from edged.errors import EdgedError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edged", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG")
    sub = parser.add_subparsers(dest="command", required=True)
    local.register(sub)
    client.register(sub)
    lifecycle.register(sub)
    quality.register(sub)
    trace.register(sub)
    update.register(sub, with_config)
    fleet.register(sub)
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
