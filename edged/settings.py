"""The daemon's settings: one typed schema, declared once, documented where declared.

Each section is what one part of the core consumes (``MemorySettings`` by the budget,
``ResidencySettings`` by the residency engine, ...); the daemon passes sections, never copies of
their fields. The schema is read from TOML and validated by pydantic (docs/architecture.md says
why pydantic): field metadata carries the bounds, sizes and durations, and every error names the
key (``server.workers: must be greater than 0, got -1``), so a typo or a bad value never falls
back silently to a default. Relative paths are relative to the config file's directory.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import psutil
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edged.errors import ConfigError, ManifestError
from edged.names import check_name

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


def parse_size(value: object) -> int:
    """Bytes from ``512MB``, ``2GiB`` or a plain positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a size such as '512MB', got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"a size must be positive, got {value}")
        return value
    match = _SIZE.match(value)
    unit = (match.group(2) or "").lower() if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(f"expected a size such as '512MB' or '2GiB', got {value!r}")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"a size must be positive, got {value!r}")
    return size


def _rate(value: object) -> int:
    """A bytes-per-second cap; 0 (or "0") means none."""
    return 0 if value in (0, "0", "") else parse_size(value)


def _address(value: object) -> str:
    """``host:port`` (``[::1]:port`` for IPv6), or "" for no listener."""
    if not isinstance(value, str):
        raise ValueError(f"expected 'host:port' such as '127.0.0.1:8001', got {value!r}")
    if value == "":
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected 'host:port' such as '127.0.0.1:8001', got {value!r}")
    return value


def _port(address: str) -> str:
    return address.rpartition(":")[2]


def _relative_to_config(value: object, info: ValidationInfo) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty path, got {value!r}")
    path = Path(value)
    base = (info.context or {}).get("base_dir") or Path.cwd()
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


Size = Annotated[int, BeforeValidator(parse_size)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Weight = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Probability = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Count = Annotated[int, Field(gt=0)]
Address = Annotated[str, BeforeValidator(_address)]
ConfigPath = Annotated[Path, BeforeValidator(_relative_to_config)]


class Section(BaseModel):
    # strict: TOML has types, so "5" is not 5; frozen: settings never change under the core.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class MemoryBudget(BaseModel):
    """``memory.budget``: a fixed number of bytes or a share of total memory ("70%")."""

    model_config = ConfigDict(frozen=True)

    bytes: int | None = None
    share: float | None = None

    @classmethod
    def parse(cls, value: object) -> MemoryBudget:
        if isinstance(value, MemoryBudget):
            return value
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                percent = float(value.strip()[:-1])
            except ValueError:
                raise ValueError(f"expected a share such as '70%', got {value!r}") from None
            if not 0 < percent <= 100 or math.isnan(percent):
                raise ValueError(f"a share must be in (0%, 100%], got {value!r}")
            return cls(share=percent / 100)
        return cls(bytes=parse_size(value))

    def resolve(self, total_memory: int | None = None) -> int:
        if self.bytes is not None:
            return self.bytes
        total = total_memory if total_memory is not None else psutil.virtual_memory().total
        return int(total * (self.share or 1.0))


class StoreSettings(Section):
    path: ConfigPath = Field(Path("/var/lib/edged"), description="the model store")

    @field_validator("path")
    @classmethod
    def _a_directory(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} is a file, not a directory")
        return value


Role = Literal["inference", "operate", "update"]
ROLES: tuple[Role, ...] = ("inference", "operate", "update")
_LOOPBACK = ("127.", "localhost:", "[::1]:")


class ServerSettings(Section):
    unix_socket: str = Field(
        "/run/edged/edged.sock", description="on-device clients; created 0660; '' for none"
    )
    # Roles (docs/security.md): what a connection may do. The kernel decides who may connect to
    # a unix socket (its mode and group); the socket decides what they may do.
    socket_group: str = Field("", description="group owning unix_socket (mode 0660); '' keeps it")
    socket_roles: list[Role] = Field(
        ["inference"], description="roles of every client of unix_socket"
    )
    admin_socket: str = Field(
        "/run/edged/admin.sock",
        description="operators and the CLI: every role; created 0600 (0660 with admin_group)",
    )
    admin_group: str = Field("", description="group that may use admin_socket; '' owner only")
    tcp: Address = Field("127.0.0.1:8001", description="the controller's listener; '' for none")
    tcp_roles: list[Role] = Field(
        ["inference"], description="roles of TCP clients without a granted client certificate"
    )
    # mutual TLS identities: certificate common name or DNS/URI SAN -> roles (tls_client_ca).
    client_roles: dict[str, list[Role]] = Field(default_factory=dict)
    allow_insecure_remote: bool = Field(
        False, description="accept a non-loopback tcp address without TLS"
    )
    # gRPC keeps message limits in a C int.
    max_message_bytes: Annotated[Size, Field(le=2**31 - 1)] = Field(
        64 * 2**20, description="largest request or response (at most 2 GiB - 1)"
    )
    workers: Count = Field(4, description="threads that run inference")
    generation_nice: Annotated[int, Field(ge=0, le=19)] = Field(
        10,
        description="nice of the threads that generate text (0..19): long generations yield "
        "the CPU to short requests when both want it",
    )
    max_inflight_bytes: Size = Field(
        256 * 2**20,
        description="bytes of large requests (>= 1 MiB) held at once; more: RESOURCE_EXHAUSTED",
    )
    max_queue_per_model: Count = Field(
        64, description="requests one model may have waiting; more get RESOURCE_EXHAUSTED"
    )
    drain_seconds: Seconds = Field(10.0, description="how long in-flight requests may finish")
    # TLS on the TCP listener: both for TLS; tls_client_ca as well for mutual TLS.
    tls_cert: ConfigPath | None = None
    tls_key: ConfigPath | None = None
    tls_client_ca: ConfigPath | None = None

    @field_validator("unix_socket", "admin_socket", mode="before")
    @classmethod
    def _socket_path(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return str(_relative_to_config(value, info))
        return value

    @field_validator("tls_cert", "tls_key", "tls_client_ca")
    @classmethod
    def _must_exist(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} does not exist or is not a file")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key: set both (or neither)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca: mutual TLS needs server.tls_cert and tls_key")
        if self.tls_cert is not None and not self.tcp:
            raise ValueError("tls_cert: TLS applies to the TCP listener; server.tcp is empty")
        if not self.unix_socket and not self.tcp:
            raise ValueError("both server.unix_socket and server.tcp are empty; set one")
        if self.admin_socket and self.admin_socket == self.unix_socket:
            raise ValueError("admin_socket: must differ from unix_socket")
        remote = self.tcp and not self.tcp.startswith(_LOOPBACK)
        if remote and self.tls_cert is None and not self.allow_insecure_remote:
            raise ValueError(
                f"tcp: {self.tcp} is reachable from other machines and has no TLS; set "
                "tls_cert and tls_key (and tls_client_ca for roles by certificate), or "
                "allow_insecure_remote = true to accept plaintext (inference only)"
            )
        if self.tls_client_ca is None:
            extra = sorted(set(self.tcp_roles) - {"inference"})
            if extra:
                raise ValueError(
                    f"tcp_roles: {', '.join(extra)} needs mutual TLS (tls_client_ca): a TCP "
                    "connection without a client certificate gets no more than inference"
                )
            if self.client_roles:
                raise ValueError("client_roles: roles by certificate need tls_client_ca")
        return self


class MetricsSettings(Section):
    address: Address = Field("127.0.0.1:8002", description="Prometheus /metrics; '' for none")


class MemorySettings(Section):
    """The memory budget (docs/residency.md)."""

    budget: Annotated[MemoryBudget, BeforeValidator(MemoryBudget.parse)] = Field(
        MemoryBudget(share=0.7), description="bytes ('512MB') or a share of total memory ('70%')"
    )
    reserve: Size = Field(64 * 2**20, description="kept free below a cgroup limit (MemoryMax=)")
    available_floor: Size = Field(256 * 2**20, description="shrink when available drops below")
    psi_threshold: Weight = Field(10.0, description="PSI 'some avg10' (%) that shrinks it")
    load_timeout_seconds: Seconds = Field(30.0, description="how long a request waits for memory")
    tick_seconds: Seconds = Field(1.0, description="how often pressure is re-read")


class ResidencySettings(Section):
    """The scoring of docs/residency.md and the policy's pacing."""

    horizon_seconds: Seconds = 300.0
    latency_weight: Weight = Field(1.0, description="loss per second a request waits for a load")
    quality_weight: Weight = Field(10.0, description="loss per unit of quality lost, per request")
    half_life_seconds: Seconds = Field(600.0, description="of the decayed request rate")
    # A downgraded model is upgraded back when it expects at least this many requests.
    upgrade_min_requests: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0
    # After an upgrade that did not fit once loaded, how long before that model may try again.
    upgrade_backoff_seconds: Seconds = 300.0


class ValidationSettings(Section):
    """How a variant is tried in a throwaway subprocess before the daemon loads it."""

    timeout_seconds: Seconds = 120.0
    quarantine_after: Count = Field(2, description="daemon deaths while it ran, then quarantine")


class PreloadSettings(Section):
    """Predictive pre-loading from the request history (docs/preloading.md)."""

    enabled: bool = True
    interval_seconds: Seconds = Field(5.0, description="how often the forecasts are re-checked")
    lead_seconds: Seconds = Field(30.0, description="load this long before a forecast request")
    min_probability: Probability = 0.3
    transition_window_seconds: Seconds = Field(2.0, description="'B follows A' within this")
    history_retention_days: Seconds = 14.0
    history_max_rows: Count = 1_000_000
    max_per_round: Count = Field(4, description="preloads one forecast round may start")


class UpdatesSettings(Section):
    """Pushed updates (docs/updates.md)."""

    trusted_keys: tuple[ConfigPath, ...] = Field((), description=".pub files or directories")
    # The provisioned root of trust (edged root): when set, update keys come from it (and its
    # rotations), and trusted_keys is not used.
    root: ConfigPath | None = None
    bandwidth: Annotated[int, BeforeValidator(_rate)] = Field(0, description="bytes/s; 0: none")
    partial_retention_hours: Seconds = 168.0

    @field_validator("trusted_keys", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return (
            (value,)
            if isinstance(value, str)
            else tuple(value)
            if isinstance(value, list)
            else value
        )


def _url(schemes: tuple[str, ...]) -> Any:
    def check(value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a URL ({' or '.join(schemes)}), got {value!r}")
        if value and not value.startswith(tuple(f"{s}://" for s in schemes)):
            raise ValueError(f"expected a URL starting {' or '.join(schemes)}://, got {value!r}")
        return value.rstrip("/")

    return BeforeValidator(check)


def _names(value: object) -> object:
    values = (
        (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else value
    )
    if isinstance(values, tuple):
        for name in values:
            try:
                check_name(name, "a group")
            except ManifestError as exc:
                raise ValueError(exc.message) from None
    return values


class FleetSettings(Section):
    """Updates pulled from an OCI registry, desired state over MQTT (docs/fleet.md)."""

    enabled: bool = False
    device_id: str = Field("", description="this node's id; empty: the host name")
    groups: Annotated[tuple[str, ...], BeforeValidator(_names)] = ()
    broker: Annotated[str, _url(("mqtt", "mqtts"))] = Field("", description="mqtt[s]://host:port")
    broker_username: str = ""
    broker_password: str = ""
    broker_ca_file: ConfigPath | None = None
    registry: Annotated[str, _url(("http", "https"))] = Field("", description="https://host:port")
    repository_prefix: str = Field("edged", description="models live at <prefix>/<model>")
    registry_username: str = ""
    registry_password: str = ""
    registry_ca_file: ConfigPath | None = None
    bandwidth: Annotated[int, BeforeValidator(_rate)] = Field(0, description="bytes/s; 0: none")
    jitter_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(
        30.0, description="a random wait before a download: a fleet does not stampede"
    )
    retry_seconds: Seconds = Field(15.0, description="after a failed fetch, the first retry")
    report_interval_seconds: Seconds = Field(5.0, description="reported state refreshed this often")

    @model_validator(mode="after")
    def _complete(self) -> FleetSettings:
        if self.enabled and not (self.broker and self.registry):
            raise ValueError("fleet.enabled needs fleet.broker and fleet.registry")
        if self.device_id:
            try:
                check_name(self.device_id, "fleet.device_id")
            except ManifestError as exc:
                raise ValueError(exc.message) from None
        return self


Mode = Literal["availability", "resource", "direct"]
Insufficient = Literal["hold", "promote", "reject"]


class LifecycleSettings(Section):
    """How a new version is promoted (docs/lifecycle.md)."""

    # availability: load and evaluate beside the serving version, then flip (falls back to
    # resource when both cannot fit); resource: release, then load, requests held meanwhile;
    # direct: no evaluation, the next request loads it (labs and benchmarks only).
    mode: Mode = "availability"
    gate_min_samples: Count = Field(30, description="paired runs the latency gate needs")
    gate_max_seconds: Seconds = Field(30.0, description="then the gate is inconclusive")
    shadow_share: Probability = Field(0.25, description="live requests mirrored to a candidate")
    shadow_min_samples: Count = Field(50, description="before the shadow test may decide")
    shadow_max_seconds: Seconds = Field(120.0, description="then the shadow is inconclusive")
    shadow_agreement: Probability = Field(
        0.99, description="agreement a candidate must keep, in every difficulty stratum"
    )
    shadow_stratified: bool = True
    shadow_hard_factor: Annotated[float, Field(ge=1, allow_inf_nan=False)] = Field(
        5.0, description="how much more often the hardest stratum is mirrored"
    )
    # What an inconclusive gate or shadow does (too little traffic, too slow a model).
    on_insufficient_traffic: Insufficient = "promote"
    probation_requests: Count = Field(200, description="requests watched after the flip")
    probation_seconds: Seconds = Field(60.0, description="time watched after the flip")
    probation_max_error_rate: Probability = Field(0.01, description="runtime errors allowed")
    probation_latency_factor: Annotated[float, Field(ge=1, allow_inf_nan=False)] = 2.0
    probation_max_psi: Seconds = Field(0.25, description="drift of confidence scores allowed")
    # The canary (docs/quality.md): after the shadow, the candidate answers this share of real
    # requests (0: no canary), the hardest stratum sampled hard_factor times more, tested per
    # stratum (stratified) or over all (the conventional canary).
    canary_share: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.0
    canary_hard_factor: Annotated[float, Field(ge=1, allow_inf_nan=False)] = 5.0
    canary_stratified: bool = True
    canary_agreement: Probability = Field(0.95, description="per stratum, with the serving one")
    canary_min_samples: Count = 30
    canary_max_seconds: Seconds = 300.0
    keep_previous_warm: bool = Field(True, description="keep the old version during probation")
    queue_limit: Count = Field(64, description="requests held during a resource-mode swap")


class QualitySettings(Section):
    """Quality measured on the device (docs/quality.md)."""

    label_retention_seconds: Seconds = Field(3600.0, description="how long an id awaits a label")
    label_capacity: Count = Field(100_000, description="answers kept for labels at most")
    label_prior_weight: Weight = Field(
        50.0, description="the manifest's quality counts as this many labels"
    )


class ModelSettings(Section):
    pin: bool = Field(False, description="never evicted, downgraded or swapped automatically")
    # Per-model lifecycle choices (the [lifecycle] defaults otherwise).
    promotion: Mode | None = None
    on_insufficient_traffic: Insufficient | None = None


class Settings(Section):
    store: StoreSettings = StoreSettings()
    server: ServerSettings = ServerSettings()
    metrics: MetricsSettings = MetricsSettings()
    memory: MemorySettings = MemorySettings()
    validation: ValidationSettings = ValidationSettings()
    residency: ResidencySettings = ResidencySettings()
    preload: PreloadSettings = PreloadSettings()
    updates: UpdatesSettings = UpdatesSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    quality: QualitySettings = QualitySettings()
    fleet: FleetSettings = FleetSettings()
    models: dict[str, ModelSettings] = {}
    source: Path | None = None

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: dict[str, ModelSettings]) -> dict[str, ModelSettings]:
        for name in value:
            try:
                check_name(name, f"models.{name}")
            except ManifestError as exc:
                raise ValueError(exc.message) from None
        return value

    @model_validator(mode="after")
    def _listeners_apart(self) -> Settings:
        metrics, tcp = self.metrics.address, self.server.tcp
        if metrics and tcp and _port(metrics) == _port(tcp) and _port(tcp) != "0":
            hosts = {metrics.rpartition(":")[0], tcp.rpartition(":")[0]}
            if len(hosts) == 1 or hosts & {"0.0.0.0", "[::]", ""}:
                raise ValueError(
                    f"metrics.address: {metrics} is server.tcp's address ({tcp}); give the "
                    "metrics another port"
                )
        return self

    def pinned(self) -> frozenset[str]:
        return frozenset(name for name, m in self.models.items() if m.pin)

    def promotion(self, model: str) -> Mode:
        chosen = self.models.get(model)
        return chosen.promotion if chosen and chosen.promotion else self.lifecycle.mode

    def on_insufficient_traffic(self, model: str) -> Insufficient:
        chosen = self.models.get(model)
        if chosen and chosen.on_insufficient_traffic:
            return chosen.on_insufficient_traffic
        return self.lifecycle.on_insufficient_traffic


def _describe(error: Any) -> str:
    """One pydantic error as ``section.key: what is wrong``."""
    loc = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown configuration key: {loc}"
    message = str(error["msg"]).removeprefix("Value error, ")
    message = message.replace("Input should be", "must be")
    if kind == "model_type" or (kind.endswith("_type") and kind.startswith("model")):
        given = error.get("input")
        return f"{loc}: expected a table [{loc}], got {given!r}"
    message = message[0].lower() + message[1:] if message else message
    given = error.get("input")
    shown = "" if kind == "value_error" or isinstance(given, dict) else f", got {given!r}"
    return f"{loc or 'config'}: {message}{shown}"


def from_dict(data: dict[str, Any], base_dir: Path | None = None) -> Settings:
    """Validate parsed TOML; relative paths resolve against ``base_dir`` (the file's directory)."""
    try:
        return Settings.model_validate(data, context={"base_dir": base_dir or Path.cwd()})
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(e) for e in exc.errors()[:5])) from None


def load(path: str | Path) -> Settings:
    """Read and validate a TOML config file; relative paths in it are relative to the file."""
    source = Path(path)
    try:
        with source.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {source}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    settings = from_dict(data, base_dir=source.resolve().parent)
    return settings.model_copy(update={"source": source})
