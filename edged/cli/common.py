"""What every command shares: the config, the daemon's address, the argument helpers."""

from __future__ import annotations

import argparse
import os

from edged import settings as settings_mod

DEFAULT_CONFIG = "/etc/edged/edged.toml"


def load_settings(args: argparse.Namespace) -> settings_mod.Settings:
    return settings_mod.load(args.config)


def address(args: argparse.Namespace) -> str:
    """--address, else the config's admin socket when this user may use it (the operator's
    tool: every role), else its serving socket, else its TCP listener."""
    if getattr(args, "address", None):
        return str(args.address)
    cfg = load_settings(args)
    admin = cfg.server.admin_socket
    if admin and os.path.exists(admin) and os.access(admin, os.R_OK | os.W_OK):
        return f"unix:{admin}"
    if cfg.server.unix_socket:
        return f"unix:{cfg.server.unix_socket}"
    return cfg.server.tcp


def with_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help="TOML config file")


def with_client(p: argparse.ArgumentParser) -> None:
    with_config(p)
    p.add_argument(
        "--address",
        help="daemon address (unix:/path or host:port); default: the config's admin socket "
        "when you may use it, else its serving socket",
    )
    p.add_argument("--timeout", type=float, default=120.0)
