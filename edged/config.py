"""The daemon's configuration: one frozen, typed object loaded from TOML and validated at load.

Unknown keys and bad values stop the start with a message that names the key (``server.tcp``),
so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import psutil

from edged.errors import ConfigError, ManifestError
from edged.store.manifest import check_name

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "kib": 2**10,
    "m": 10**6,
    "mb": 10**6,
    "mib": 2**20,
    "g": 10**9,
    "gb": 10**9,
    "gib": 2**30,
    "t": 10**12,
    "tb": 10**12,
    "tib": 2**40,
}


def parse_size(text: str | int, key: str) -> int:
    """Bytes from ``512MB``, ``2GiB`` or a plain integer."""
    if isinstance(text, bool):
        raise ConfigError(f"{key}: expected a size such as '512MB', got {text!r}")
    if isinstance(text, int):
        if text <= 0:
            raise ConfigError(f"{key}: a size must be positive, got {text}")
        return text
    match = _SIZE.match(text)
    unit = (match.group(2) or "").lower() if match else ""
    if not match or unit not in _UNITS:
        raise ConfigError(f"{key}: expected a size such as '512MB' or '2GiB', got {text!r}")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ConfigError(f"{key}: a size must be positive, got {text!r}")
    return value


@dataclasses.dataclass(frozen=True)
class MemoryBudget:
    """``memory.budget``: a fixed number of bytes or a share of total memory."""

    bytes: int | None = None
    share: float | None = None

    @classmethod
    def parse(cls, text: str | int, key: str) -> MemoryBudget:
        if isinstance(text, str) and text.strip().endswith("%"):
            try:
                percent = float(text.strip()[:-1])
            except ValueError:
                raise ConfigError(f"{key}: expected a share such as '70%', got {text!r}") from None
            if not 0 < percent <= 100:
                raise ConfigError(f"{key}: a share must be in (0%, 100%], got {text!r}")
            return cls(share=percent / 100)
        return cls(bytes=parse_size(text, key))

    def resolve(self, total_memory: int | None = None) -> int:
        if self.bytes is not None:
            return self.bytes
        total = total_memory if total_memory is not None else psutil.virtual_memory().total
        return int(total * (self.share or 1.0))


def parse_address(text: str, key: str, *, allow_empty: bool) -> str:
    """``host:port`` (``[::1]:port`` for IPv6); the empty string disables the listener."""
    if text == "":
        if allow_empty:
            return ""
        raise ConfigError(f"{key}: an address is required")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: expected 'host:port' such as '127.0.0.1:8001', got {text!r}")
    return text


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    path: Path = Path("/var/lib/edged")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    unix_socket: str = "/run/edged/edged.sock"
    tcp: str = "127.0.0.1:8001"
    max_message_bytes: int = 64 * 2**20
    workers: int = 4
    drain_seconds: float = 10.0
    # TLS on the TCP listener (the controller's link): both set for TLS; tls_client_ca as well
    # for mutual TLS (clients must present a certificate signed by it).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    address: str = "127.0.0.1:8002"


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
    budget: MemoryBudget = MemoryBudget(share=0.7)
    reserve: int = 64 * 2**20  # kept free below a cgroup limit (MemoryMax=)
    available_floor: int = 256 * 2**20  # shrink the budget when available memory drops below
    psi_threshold: float = 10.0  # PSI "some avg10" (%) above which the budget shrinks
    load_timeout_seconds: float = 30.0  # how long a request waits for memory
    tick_seconds: float = 1.0  # how often pressure is re-read


@dataclasses.dataclass(frozen=True)
class ResidencyConfig:
    """The scoring of docs/residency.md."""

    horizon_seconds: float = 300.0
    latency_weight: float = 1.0
    quality_weight: float = 10.0
    half_life_seconds: float = 600.0


@dataclasses.dataclass(frozen=True)
class PreloadConfig:
    """Predictive pre-loading from the request history (docs/preloading.md)."""

    enabled: bool = True
    interval_seconds: float = 5.0  # how often the forecasts are re-checked
    lead_seconds: float = 30.0  # load a model this long before its forecast request
    min_probability: float = 0.3  # of a request within the lead (or of following a predecessor)
    transition_window_seconds: float = 2.0  # "B follows A" means within this many seconds
    history_retention_days: float = 14.0
    history_max_rows: int = 1_000_000


@dataclasses.dataclass(frozen=True)
class UpdatesConfig:
    """Pushed updates (docs/updates.md)."""

    trusted_keys: tuple[Path, ...] = ()  # .pub files or directories of them; none: refuse all
    bandwidth: int = 0  # bytes per second received by Push; 0: unlimited
    partial_retention_hours: float = 168.0  # unfinished pushes are kept this long for resuming


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    pin: bool = False


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    """How a variant is tried in a throwaway subprocess before the daemon loads it."""

    timeout_seconds: float = 120.0
    # Crashes of the daemon while a variant was loading or running before it is quarantined.
    quarantine_after: int = 2


@dataclasses.dataclass(frozen=True)
class Config:
    store: StoreConfig = StoreConfig()
    server: ServerConfig = ServerConfig()
    metrics: MetricsConfig = MetricsConfig()
    memory: MemoryConfig = MemoryConfig()
    validation: ValidationConfig = ValidationConfig()
    residency: ResidencyConfig = ResidencyConfig()
    preload: PreloadConfig = PreloadConfig()
    updates: UpdatesConfig = UpdatesConfig()
    models: tuple[tuple[str, ModelConfig], ...] = ()
    source: Path | None = None

    def pinned(self) -> frozenset[str]:
        return frozenset(name for name, m in self.models if m.pin)


def _take(table: dict[str, Any], key: str, prefix: str, kinds: tuple[type, ...]) -> Any:
    value = table.pop(key)
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{prefix}.{key}: expected {_kind_names(kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise ConfigError(f"{prefix}.{key}: expected {_kind_names(kinds)}, got {value!r}")
    return value


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _positive(value: float, key: str) -> float:
    if value <= 0:
        raise ConfigError(f"{key}: must be positive, got {value!r}")
    return value


def _number(table: dict[str, Any], key: str, prefix: str) -> float:
    return float(_positive(_take(table, key, prefix, (int, float)), f"{prefix}.{key}"))


def _path(text: str, base: Path, key: str, *, must_exist: bool = True) -> Path:
    """A path from the config, relative to the config file's directory."""
    if not text:
        raise ConfigError(f"{key}: empty path")
    path = Path(text)
    path = Path(os.path.normpath(path if path.is_absolute() else base / path))
    if must_exist and not path.is_file():
        raise ConfigError(f"{key}: {path} does not exist or is not a file")
    return path


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.pop(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a table [{name}], got {value!r}")
    return dict(value)


def _no_leftovers(table: dict[str, Any], prefix: str) -> None:
    if table:
        keys = ", ".join(f"{prefix}.{k}" if prefix else k for k in sorted(table))
        raise ConfigError(f"unknown configuration key: {keys}")


def from_dict(data: dict[str, Any], base_dir: Path | None = None) -> Config:
    """Build a Config from parsed TOML; relative store paths resolve against ``base_dir``."""
    data = dict(data)
    base = base_dir or Path.cwd()

    store_t = _section(data, "store")
    store = StoreConfig()
    if "path" in store_t:
        path = Path(_take(store_t, "path", "store", (str,)))
        store = StoreConfig(
            path=Path(os.path.normpath(path if path.is_absolute() else base / path))
        )
    _no_leftovers(store_t, "store")

    server_t = _section(data, "server")
    server = ServerConfig()
    updates: dict[str, Any] = {}
    if "unix_socket" in server_t:
        sock = _take(server_t, "unix_socket", "server", (str,))
        if sock and not Path(sock).is_absolute():
            sock = os.path.normpath(base / sock)
        updates["unix_socket"] = sock
    if "tcp" in server_t:
        updates["tcp"] = parse_address(
            _take(server_t, "tcp", "server", (str,)), "server.tcp", allow_empty=True
        )
    if "max_message_bytes" in server_t:
        updates["max_message_bytes"] = parse_size(
            _take(server_t, "max_message_bytes", "server", (str, int)), "server.max_message_bytes"
        )
    if "workers" in server_t:
        updates["workers"] = int(
            _positive(_take(server_t, "workers", "server", (int,)), "server.workers")
        )
    if "drain_seconds" in server_t:
        updates["drain_seconds"] = float(
            _positive(
                _take(server_t, "drain_seconds", "server", (int, float)), "server.drain_seconds"
            )
        )
    for key in ("tls_cert", "tls_key", "tls_client_ca"):
        if key in server_t:
            updates[key] = _path(_take(server_t, key, "server", (str,)), base, f"server.{key}")
    server = dataclasses.replace(server, **updates)
    if (server.tls_cert is None) != (server.tls_key is None):
        raise ConfigError("server.tls_cert and server.tls_key: set both (or neither)")
    if server.tls_client_ca is not None and server.tls_cert is None:
        raise ConfigError("server.tls_client_ca: mutual TLS needs server.tls_cert and tls_key")
    if server.tls_cert is not None and not server.tcp:
        raise ConfigError("server.tls_cert: TLS applies to the TCP listener; server.tcp is empty")
    if not server.unix_socket and not server.tcp:
        raise ConfigError("server: both server.unix_socket and server.tcp are empty; set one")
    _no_leftovers(server_t, "server")

    metrics_t = _section(data, "metrics")
    metrics = MetricsConfig()
    if "address" in metrics_t:
        metrics = MetricsConfig(
            address=parse_address(
                _take(metrics_t, "address", "metrics", (str,)), "metrics.address", allow_empty=True
            )
        )
    _no_leftovers(metrics_t, "metrics")

    memory_t = _section(data, "memory")
    m_updates: dict[str, Any] = {}
    if "budget" in memory_t:
        m_updates["budget"] = MemoryBudget.parse(
            _take(memory_t, "budget", "memory", (str, int)), "memory.budget"
        )
    for key in ("reserve", "available_floor"):
        if key in memory_t:
            m_updates[key] = parse_size(_take(memory_t, key, "memory", (str, int)), f"memory.{key}")
    for key in ("psi_threshold", "load_timeout_seconds", "tick_seconds"):
        if key in memory_t:
            m_updates[key] = _number(memory_t, key, "memory")
    memory = dataclasses.replace(MemoryConfig(), **m_updates)
    _no_leftovers(memory_t, "memory")

    residency_t = _section(data, "residency")
    residency = dataclasses.replace(
        ResidencyConfig(),
        **{
            key: _number(residency_t, key, "residency")
            for key in ("horizon_seconds", "latency_weight", "quality_weight", "half_life_seconds")
            if key in residency_t
        },
    )
    _no_leftovers(residency_t, "residency")

    preload_t = _section(data, "preload")
    p_updates: dict[str, Any] = {}
    if "enabled" in preload_t:
        p_updates["enabled"] = bool(_take(preload_t, "enabled", "preload", (bool,)))
    for key in (
        "interval_seconds",
        "lead_seconds",
        "transition_window_seconds",
        "history_retention_days",
    ):
        if key in preload_t:
            p_updates[key] = _number(preload_t, key, "preload")
    if "min_probability" in preload_t:
        value = _number(preload_t, "min_probability", "preload")
        if value > 1:
            raise ConfigError(f"preload.min_probability: must be in (0, 1], got {value}")
        p_updates["min_probability"] = value
    if "history_max_rows" in preload_t:
        p_updates["history_max_rows"] = int(
            _positive(
                _take(preload_t, "history_max_rows", "preload", (int,)), "preload.history_max_rows"
            )
        )
    preload = dataclasses.replace(PreloadConfig(), **p_updates)
    _no_leftovers(preload_t, "preload")

    models_t = _section(data, "models")
    models = []
    for name, raw_table in sorted(models_t.items()):
        try:
            check_name(name, f"models.{name}")
        except ManifestError as exc:
            raise ConfigError(exc.message) from None
        if not isinstance(raw_table, dict):
            raise ConfigError(f"models.{name}: expected a table [models.{name}]")
        table = dict(raw_table)
        pin = bool(_take(table, "pin", f"models.{name}", (bool,))) if "pin" in table else False
        _no_leftovers(table, f"models.{name}")
        models.append((name, ModelConfig(pin=pin)))

    validation_t = _section(data, "validation")
    validation = ValidationConfig()
    v_updates: dict[str, Any] = {}
    if "timeout_seconds" in validation_t:
        v_updates["timeout_seconds"] = float(
            _positive(
                _take(validation_t, "timeout_seconds", "validation", (int, float)),
                "validation.timeout_seconds",
            )
        )
    if "quarantine_after" in validation_t:
        v_updates["quarantine_after"] = int(
            _positive(
                _take(validation_t, "quarantine_after", "validation", (int,)),
                "validation.quarantine_after",
            )
        )
    validation = dataclasses.replace(validation, **v_updates)
    _no_leftovers(validation_t, "validation")

    updates_t = _section(data, "updates")
    u_updates: dict[str, Any] = {}
    if "trusted_keys" in updates_t:
        keys = _take(updates_t, "trusted_keys", "updates", (list, str))
        keys = [keys] if isinstance(keys, str) else keys
        if not all(isinstance(k, str) for k in keys):
            raise ConfigError("updates.trusted_keys: expected a list of paths")
        u_updates["trusted_keys"] = tuple(
            _path(k, base, "updates.trusted_keys", must_exist=False) for k in keys
        )
    if "bandwidth" in updates_t:
        cap = _take(updates_t, "bandwidth", "updates", (str, int))
        # "0" (the default) is no cap; "2MB" is two megabytes per second.
        unlimited = cap in (0, "0", "")
        u_updates["bandwidth"] = 0 if unlimited else parse_size(cap, "updates.bandwidth")
    if "partial_retention_hours" in updates_t:
        u_updates["partial_retention_hours"] = _number(
            updates_t, "partial_retention_hours", "updates"
        )
    updates_cfg = dataclasses.replace(UpdatesConfig(), **u_updates)
    _no_leftovers(updates_t, "updates")

    _no_leftovers(data, "")
    return Config(
        updates=updates_cfg,
        store=store,
        server=server,
        metrics=metrics,
        memory=memory,
        validation=validation,
        residency=residency,
        preload=preload,
        models=tuple(models),
    )


def load(path: str | Path) -> Config:
    """Read and validate a TOML config file; relative paths in it are relative to the file."""
    source = Path(path)
    try:
        with source.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {source}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    config = from_dict(data, base_dir=source.resolve().parent)
    return dataclasses.replace(config, source=source)
