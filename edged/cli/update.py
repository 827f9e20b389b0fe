"""`edged patch | keygen | sign | update | push`: the update tools, on the controller or a node."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _bar(description: str, total: int, initial: int = 0) -> Callable[[int], None] | None:
    """A progress bar on a terminal; nothing when output goes to a file or pipe."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = tqdm(
        total=total, initial=initial, desc=description, unit="B", unit_scale=True, leave=True
    )

    def update(n: int) -> None:
        bar.update(n)

    return update


def cmd_patch_create(args: argparse.Namespace) -> int:
    from edged.update import patch

    base, target = Path(args.base), Path(args.target)
    header = patch.create(
        base,
        target,
        Path(args.out),
        level=args.level,
        tensor_aware=not args.generic,
        progress=_bar("create", target.stat().st_size),
    )
    size = Path(args.out).stat().st_size
    print(
        f"{args.out}: {size} bytes ({size / max(1, header.target_size):.3f} of the target), "
        f"{len(header.ops)} ops; {header.describe()}"
    )
    return 0


def cmd_patch_apply(args: argparse.Namespace) -> int:
    from edged.update import patch

    header = patch.read_header(Path(args.patch))
    patch.apply(
        Path(args.base),
        Path(args.patch),
        Path(args.out),
        progress=_bar("apply", header.target_size),
    )
    print(f"{args.out}: {header.target_size} bytes, sha256 {header.target_sha256} (verified)")
    return 0


def cmd_patch_inspect(args: argparse.Namespace) -> int:
    from edged.update import patch

    print(json.dumps(patch.read_header(Path(args.patch)).summary(), indent=2))
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from edged.update import signing

    public, kid = signing.keygen(Path(args.out))
    print(f"private key {args.out} (keep it on the controller), public key {public}, id {kid}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from edged.update import signing

    out = signing.sign_file(Path(args.manifest), Path(args.key))
    print(f"signature written to {out}")
    return 0


def cmd_update_build(args: argparse.Namespace) -> int:
    from edged.update.controller import client

    manifest = client.build(
        Path(args.base_dir),
        Path(args.target_dir),
        Path(args.out),
        Path(args.key),
        activate=args.activate,
        level=args.level,
        progress=_bar,
        freshness=client.Freshness(
            sequence=args.sequence,
            valid_seconds=args.valid_hours * 3600.0,
            devices=tuple(args.device or ()),
            groups=tuple(args.group or ()),
        ),
    )
    assert manifest.update is not None
    for vid, t in sorted(manifest.update.transfers.items()):
        size = f"{t.size} bytes" if t.size else "nothing to send"
        print(f"  {vid:<8} {t.method:<6} {size}")
    print(f"{args.out}/manifest.json (signed): {manifest.update.bytes_to_send} bytes to send")
    return 0


def _channel(args: argparse.Namespace) -> Any:
    import grpc

    options = [("grpc.max_send_message_length", 8 << 20)]
    if not (args.tls_ca or args.tls_cert):
        return grpc.insecure_channel(args.node, options=options)
    ca = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    cert = Path(args.tls_cert).read_bytes() if args.tls_cert else None
    key = Path(args.tls_key).read_bytes() if args.tls_key else None
    credentials = grpc.ssl_channel_credentials(ca, key, cert)
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    return grpc.secure_channel(args.node, credentials, options)


def cmd_push(args: argparse.Namespace) -> int:
    from edged.update.controller import client

    manifest = Path(args.manifest)
    files = client.files_to_push(manifest, [Path(p) for p in args.patch or []])
    with _channel(args) as channel:
        response = client.push(
            channel,
            manifest,
            files,
            retries=args.retries,
            progress=lambda total, held: _bar("push", total, held),
            roots=[Path(p).read_bytes() for p in args.root or []],
        )
    print(f"{response.model} version {response.version}: {response.state}")
    return 0


def cmd_root_new(args: argparse.Namespace) -> int:
    from edged.update import root, signing

    data = root.new(
        args.version,
        args.expires,
        [signing.load_public(Path(p)) for p in args.root_key],
        args.threshold,
        [signing.load_public(Path(p)) for p in args.update_key],
    )
    Path(args.out).write_bytes(data)
    print(f"{args.out}: root version {args.version}, unsigned (edged root sign)")
    return 0


def cmd_root_sign(args: argparse.Namespace) -> int:
    from edged.update import root

    path = Path(args.root)
    root.sign_file(path, Path(args.key))
    print(f"{path}: signed by {args.key}")
    return 0


def register(sub: Any, with_config: Callable[[argparse.ArgumentParser], None]) -> None:
    r = sub.add_parser("root", help="the root of trust for updates (root keys, update keys)")
    root_sub = r.add_subparsers(dest="root_command", required=True)
    p = root_sub.add_parser("new", help="write an unsigned root document")
    p.add_argument("--version", type=int, required=True)
    p.add_argument("--expires", required=True, help="RFC 3339, e.g. 2027-12-01T00:00:00Z")
    p.add_argument("--root-key", action="append", required=True, help="a root .pub (repeat)")
    p.add_argument("--threshold", type=int, default=1, help="root signatures needed")
    p.add_argument("--update-key", action="append", required=True, help="an update .pub")
    p.add_argument("-o", "--out", required=True)
    p.set_defaults(fn=cmd_root_new)
    p = root_sub.add_parser(
        "sign", help="add a signature (a rotation: the old root's keys and the new one's)"
    )
    p.add_argument("root")
    p.add_argument("--key", required=True)
    p.set_defaults(fn=cmd_root_sign)

    patch = sub.add_parser("patch", help="binary patches between two versions of a model file")
    patch_sub = patch.add_subparsers(dest="patch_command", required=True)
    p = patch_sub.add_parser("create", help="write a patch turning --base into --target")
    p.add_argument("--base", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--level", type=int, default=3, help="zstd level (default 3)")
    p.add_argument("--generic", action="store_true", help="ignore tensors; whole-file delta")
    p.set_defaults(fn=cmd_patch_create)
    p = patch_sub.add_parser("apply", help="apply a patch to --base, writing a verified -o")
    p.add_argument("--base", required=True)
    p.add_argument("patch")
    p.add_argument("-o", "--out", required=True)
    p.set_defaults(fn=cmd_patch_apply)
    p = patch_sub.add_parser("inspect", help="what a patch holds (JSON)")
    p.add_argument("patch")
    p.set_defaults(fn=cmd_patch_inspect)

    p = sub.add_parser("keygen", help="create an ed25519 signing key (and KEY.pub)")
    p.add_argument("-o", "--out", required=True)
    p.set_defaults(fn=cmd_keygen)
    p = sub.add_parser("sign", help="sign a manifest (writes MANIFEST.sig)")
    p.add_argument("manifest")
    p.add_argument("--key", required=True)
    p.set_defaults(fn=cmd_sign)

    p = sub.add_parser("update", help="build a signed update from two model directories")
    p.add_argument("--base-dir", required=True, help="the version nodes have (manifest.json)")
    p.add_argument("--target-dir", required=True, help="the new version (manifest.json)")
    p.add_argument("--key", required=True, help="ed25519 private key (edged keygen)")
    p.add_argument("--activate", choices=("manual", "immediate"), default="manual")
    p.add_argument("--level", type=int, default=3)
    p.add_argument(
        "--sequence", type=int, help="the update's sequence (default: now, in milliseconds)"
    )
    p.add_argument("--valid-hours", type=float, default=168.0, help="expires after (hours)")
    p.add_argument("--device", action="append", help="meant for this device (repeatable)")
    p.add_argument("--group", action="append", help="meant for this group (repeatable)")
    p.add_argument("-o", "--out", required=True)
    p.set_defaults(fn=cmd_update_build)

    p = sub.add_parser("push", help="push a signed update to a node (resumes)")
    p.add_argument("--node", required=True, help="host:port or unix:/path")
    p.add_argument("--manifest", required=True)
    p.add_argument("--patch", action="append", help="patch or full file (default: beside it)")
    p.add_argument("--retries", type=int, default=5)
    p.add_argument("--root", action="append", help="a newer root document to send first")
    p.add_argument("--tls-ca", help="CA certificate of the node (enables TLS)")
    p.add_argument("--tls-cert", help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", help="client key (mutual TLS)")
    p.add_argument("--tls-server-name", help="expected name in the node's certificate")
    p.set_defaults(fn=cmd_push)
