"""Commands on this machine, without a daemon: `edged serve | import | demo`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edged.cli.common import load_settings, with_config
from edged.serving.local import Imported, check_store, import_demo, import_version


def cmd_serve(args: argparse.Namespace) -> int:
    from edged.app import serve

    serve(load_settings(args))
    return 0


def _report(imported: Imported) -> None:
    if imported.kept:
        print(
            f"demo model {imported.name} version {imported.version} is already in the store; kept"
        )
        return
    print(f"imported {imported.name} version {imported.version} ({imported.variants} variants)")
    if imported.state == "staged":
        print(
            "  staged: a running daemon promotes it on SIGHUP"
            if imported.requested
            else f"  staged: `edged activate {imported.name} {imported.version}` promotes it"
        )
    for v in imported.verdicts:
        verdict = "usable" if v.usable else f"UNUSABLE: {v.reason}"
        print(f"  {v.variant:<8} {v.key[:12]}  {verdict}")


def cmd_import(args: argparse.Namespace) -> int:
    _report(
        import_version(
            load_settings(args),
            Path(args.dir),
            activate=not args.no_activate,
            validate=not args.no_validate,
        )
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    for imported in import_demo(load_settings(args), Path(args.out) if args.out else None):
        _report(imported)
    return 0


def cmd_store_check(args: argparse.Namespace) -> int:
    """Exit 0 when every blob matches its digest, 1 (and each problem on a line) otherwise."""
    report = check_store(load_settings(args))
    for problem in report.problems:
        print(f"problem: {problem}")
    if report.leftovers:
        print(f"{report.leftovers} temporary files of interrupted writes (removed at next start)")
    print(f"{report.blobs} blobs ({report.bytes} bytes) verified, {len(report.problems)} problems")
    return 1 if report.problems else 0


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the daemon in the foreground")
    with_config(p)
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("import", help="add a model version from a directory with manifest.json")
    with_config(p)
    p.add_argument("dir")
    p.add_argument("--no-activate", action="store_true", help="do not make it the active version")
    p.add_argument("--no-validate", action="store_true", help="skip the subprocess validation")
    p.set_defaults(fn=cmd_import)

    p = sub.add_parser("store", help="the model store")
    store_sub = p.add_subparsers(dest="store_command", required=True)
    p = store_sub.add_parser("check", help="verify every blob against its digest (read-only)")
    with_config(p)
    p.set_defaults(fn=cmd_store_check)

    p = sub.add_parser("demo", help="build the demo portfolio offline and import it")
    with_config(p)
    p.add_argument("--out", help="where to write the model sources (default: beside the store)")
    p.set_defaults(fn=cmd_demo)
