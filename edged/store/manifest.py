"""Model version manifests: what a version holds (variants) and where it came from (lineage).

Everything here comes from outside (a directory on disk, later the network), so every field is
checked and every error names the field.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any

from edged.errors import ManifestError
from edged.names import SHA256_RE, check_name, check_relative_file, check_version
from edged.store.lineage import Lineage, OutputKind, parse_lineage, parse_outputs

FORMATS = ("onnx", "gguf")  # of stored files; a cascade is served as format "cascade"
SCHEMA = 1
MAX_MANIFEST_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class LatencyBudget:
    p50: float
    p95: float
    p99: float


@dataclasses.dataclass(frozen=True)
class Variant:
    id: str
    format: str
    file: str
    sha256: str
    size: int
    quantization: str
    target: str
    quality: float
    latency_ms: LatencyBudget | None
    memory_bytes: int
    options: dict[str, Any]

    @property
    def threads(self) -> int | None:
        value = self.options.get("threads")
        return int(value) if isinstance(value, int) else None


@dataclasses.dataclass(frozen=True)
class Warmup:
    """The sample a variant runs once before it is marked ready (manifest ``warmup``)."""

    prompt: str | None = None  # generative models
    inputs: tuple[tuple[str, tuple[int, ...], tuple[Any, ...]], ...] = ()  # name, shape, data


@dataclasses.dataclass(frozen=True)
class Transfer:
    """How one variant's file reaches a node in an update (manifest ``update.variants.ID``)."""

    method: str  # "patch" (against base_sha256), "full" (the whole file) or "reuse" (already there)
    sha256: str = ""  # of what is sent: the patch, or the file itself
    size: int = 0
    base_sha256: str = ""


@dataclasses.dataclass(frozen=True)
class UpdateSection:
    """The ``update`` section of a pushed manifest: what it is built on and how files travel."""

    base_version: str
    activate: str  # "manual" | "immediate"
    transfers: dict[str, Transfer]  # by variant id
    # Freshness (docs/updates.md, after TUF): a per-model sequence that only moves forward, an
    # expiry (UNIX seconds), and the devices or groups it is meant for (none: every node).
    sequence: int = 0
    expires: float = 0.0
    devices: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    @property
    def bytes_to_send(self) -> int:
        return sum(t.size for t in self.transfers.values())


ACTIVATE = ("manual", "immediate")
TRANSFER_METHODS = ("patch", "full", "reuse")


@dataclasses.dataclass(frozen=True)
class CascadeSpec:
    """``cascade``: serve the first stage, escalate to the next when it is unsure
    (docs/quality.md). ``threshold``: the publisher's calibration, used until the device has
    calibrated its own."""

    stages: tuple[str, ...]
    agreement: float = 0.99
    threshold: float | None = None


CASCADE = "cascade"  # the id of the variant a cascade is served as
CASCADE_PREFERENCE = 1e-4


@dataclasses.dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    created: str
    lineage: Lineage
    variants: tuple[Variant, ...]
    raw: dict[str, Any]
    warmup: Warmup | None = None
    update: UpdateSection | None = None
    # How each output compares between versions; outputs not named here are compared as
    # class scores when the model's signature says so (docs/lifecycle.md), else as tensors.
    outputs: dict[str, OutputKind] = dataclasses.field(default_factory=dict)
    cascade: CascadeSpec | None = None

    def variant(self, variant_id: str) -> Variant:
        for v in self.variants:
            if v.id == variant_id:
                return v
        if variant_id == CASCADE and self.cascade is not None:
            return self.cascade_variant
        raise ManifestError(f"model {self.name} version {self.version} has no variant {variant_id}")

    @property
    def servable(self) -> tuple[Variant, ...]:
        """What the portfolio can serve: the variants, and the cascade of some of them."""
        return (*self.variants, self.cascade_variant) if self.cascade else self.variants

    @functools.cached_property
    def cascade_variant(self) -> Variant:
        """The cascade as one variant: its stages' files loaded together, its memory their sum,
        its quality (before labels measure it) its last stage's. Not in ``variants``: nothing
        is stored, sent or probed for it apart from its stages."""
        assert self.cascade is not None
        stages = [self.variant(s) for s in self.cascade.stages]
        digest = hashlib.sha256("".join(v.sha256 for v in stages).encode()).hexdigest()
        return Variant(
            id=CASCADE,
            format=CASCADE,
            file=stages[0].file,
            sha256=digest,
            size=sum(v.size for v in stages),
            quantization="+".join(v.quantization or v.id for v in stages),
            target=stages[-1].target,
            # At equal quality a cascade is preferred to its own stages: it spends less compute.
            quality=min(stages[-1].quality + CASCADE_PREFERENCE, 1.0),
            latency_ms=None,
            memory_bytes=sum(v.memory_bytes for v in stages),
            options={
                "stages": list(self.cascade.stages),
                "stage_variants": tuple(stages),
                "agreement": self.cascade.agreement,
                "threshold": self.cascade.threshold,
            },
        )

    def to_json(self) -> str:
        return json.dumps(self.raw, indent=2, sort_keys=True) + "\n"


def files_of(variant: Variant) -> tuple[Variant, ...]:
    """The variants whose files loading ``variant`` reads: a cascade's stages, else itself."""
    if variant.format == CASCADE:
        stages: tuple[Variant, ...] = variant.options["stage_variants"]
        return stages
    return (variant,)


def _get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise ManifestError(f"{where}{key}: missing")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ManifestError(f"{where}{key}: expected {_names(kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise ManifestError(f"{where}{key}: expected {_names(kinds)}, got {value!r}")
    return value


def _names(kinds: tuple[type, ...]) -> str:
    return "/".join(
        {
            str: "string",
            int: "integer",
            float: "number",
            dict: "object",
            list: "array",
            bool: "boolean",
        }.get(k, k.__name__)
        for k in kinds
    )


def _variant(raw: Any, index: int) -> Variant:
    where = f"variants[{index}]."
    if not isinstance(raw, dict):
        raise ManifestError(f"variants[{index}]: expected an object")
    vid = check_name(_get(raw, "id", str, where), f"{where}id")
    where = f"variants[{vid}]."
    fmt = _get(raw, "format", str, where)
    if fmt not in FORMATS:
        raise ManifestError(f"{where}format: unknown format {fmt!r} (expected one of {FORMATS})")
    file = check_relative_file(_get(raw, "file", str, where), f"{where}file")
    digest = _get(raw, "sha256", str, where)
    if not SHA256_RE.match(digest):
        raise ManifestError(f"{where}sha256: expected 64 lowercase hex digits, got {digest!r}")
    size = _get(raw, "size", int, where)
    if size < 0:
        raise ManifestError(f"{where}size: must not be negative, got {size}")
    quality = float(_get(raw, "quality", (int, float), where))
    if not 0.0 <= quality <= 1.0:
        raise ManifestError(f"{where}quality: must be within 0..1, got {quality}")
    latency = None
    if "latency_ms" in raw:
        lat = _get(raw, "latency_ms", dict, where)
        values = [
            float(_get(lat, k, (int, float), f"{where}latency_ms.")) for k in ("p50", "p95", "p99")
        ]
        latency = LatencyBudget(*values)
    memory = 0
    if "memory_bytes" in raw:
        memory = _get(raw, "memory_bytes", int, where)
        if memory < 0:
            raise ManifestError(f"{where}memory_bytes: must not be negative, got {memory}")
    options = raw.get("options", {})
    if not isinstance(options, dict):
        raise ManifestError(f"{where}options: expected an object, got {options!r}")
    for key in ("threads", "n_ctx"):
        if key in options and (
            isinstance(options[key], bool) or not isinstance(options[key], int) or options[key] <= 0
        ):
            raise ManifestError(f"{where}options.{key}: expected a positive integer")
    return Variant(
        id=vid,
        format=fmt,
        file=file,
        sha256=digest,
        size=size,
        quantization=str(raw.get("quantization", "")),
        target=str(raw.get("target", "cpu")),
        quality=quality,
        latency_ms=latency,
        memory_bytes=memory,
        options=dict(options),
    )


def _warmup(raw: Any) -> Warmup:
    """``{"prompt": "..."}`` or ``{"inputs": {"name": {"shape": [1, 4], "data": [...]}}}``;
    the datatype comes from the model's signature."""
    if not isinstance(raw, dict):
        raise ManifestError("warmup: expected an object")
    prompt = None
    if "prompt" in raw:
        prompt = _get(raw, "prompt", str, "warmup.")
    inputs = []
    for name, tensor in _get(raw, "inputs", dict, "warmup.").items() if "inputs" in raw else ():
        where = f"warmup.inputs.{name}."
        if not isinstance(tensor, dict):
            raise ManifestError(f"warmup.inputs.{name}: expected an object with shape and data")
        shape = _get(tensor, "shape", list, where)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ManifestError(f"{where}shape: expected non-negative integers, got {shape!r}")
        data = _get(tensor, "data", list, where)
        count = 1
        for d in shape:
            count *= d
        if len(data) != count:
            raise ManifestError(f"{where}data: {len(data)} values for shape {shape} ({count})")
        if not all(isinstance(x, (int, float, str)) for x in data):
            raise ManifestError(f"{where}data: expected a flat list of numbers or strings")
        inputs.append((str(name), tuple(shape), tuple(data)))
    if prompt is None and not inputs:
        raise ManifestError("warmup: expected 'prompt' or 'inputs'")
    return Warmup(prompt, tuple(inputs))


def parse(raw: Any) -> Manifest:
    """Validate a decoded manifest; raises ManifestError naming the offending field."""
    if not isinstance(raw, dict):
        raise ManifestError("manifest: expected a JSON object")
    schema = _get(raw, "schema", int, "")
    if schema != SCHEMA:
        raise ManifestError(f"schema: unsupported manifest schema {schema} (expected {SCHEMA})")
    name = check_name(_get(raw, "name", str, ""), "name")
    version = check_version(_get(raw, "version", str, ""), "version")
    created = str(raw.get("created", ""))
    lineage = parse_lineage(raw.get("lineage"))
    variants_raw = _get(raw, "variants", list, "")
    if not variants_raw:
        raise ManifestError("variants: a model version needs at least one variant")
    variants = tuple(_variant(v, i) for i, v in enumerate(variants_raw))
    seen: set[str] = set()
    for v in variants:
        if v.id in seen:
            raise ManifestError(f"variants[{v.id}].id: duplicate variant id")
        seen.add(v.id)
    warmup = _warmup(raw["warmup"]) if "warmup" in raw else None
    update = _update(raw["update"], variants) if "update" in raw else None
    outputs = parse_outputs(raw.get("outputs"))
    cascade = _cascade(raw["cascade"], variants) if "cascade" in raw else None
    return Manifest(
        name, version, created, lineage, variants, raw, warmup, update, outputs, cascade
    )


def _cascade(raw: Any, variants: tuple[Variant, ...]) -> CascadeSpec:
    if not isinstance(raw, dict):
        raise ManifestError("cascade: expected an object with 'stages'")
    stages = _get(raw, "stages", list, "cascade.")
    ids = {v.id for v in variants}
    if len(stages) < 2 or not all(isinstance(s, str) for s in stages):
        raise ManifestError("cascade.stages: expected two or more variant ids, cheapest first")
    for stage in stages:
        if stage not in ids:
            raise ManifestError(f"cascade.stages: the manifest has no variant {stage!r}")
    if len(set(stages)) != len(stages):
        raise ManifestError("cascade.stages: a variant appears twice")
    if any(v.format != "onnx" for v in variants if v.id in stages):
        raise ManifestError("cascade.stages: only ONNX variants can be cascaded")
    agreement = (
        float(_get(raw, "agreement", (int, float), "cascade.")) if "agreement" in raw else 0.99
    )
    if not 0 < agreement <= 1:
        raise ManifestError(f"cascade.agreement: must be in (0, 1], got {agreement}")
    threshold = raw.get("threshold")
    if threshold is not None and (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not 0 <= threshold <= 1
    ):
        raise ManifestError(
            f"cascade.threshold: expected a confidence in [0, 1], got {threshold!r}"
        )
    unknown = sorted(set(raw) - {"stages", "agreement", "threshold"})
    if unknown:
        raise ManifestError(f"cascade.{unknown[0]}: unknown key")
    return CascadeSpec(
        tuple(stages), agreement, float(threshold) if threshold is not None else None
    )


def _digest(obj: dict[str, Any], key: str, where: str) -> str:
    value = _get(obj, key, str, where)
    if not SHA256_RE.match(value):
        raise ManifestError(f"{where}{key}: expected 64 lowercase hex digits, got {value!r}")
    return str(value)


def _update(raw: Any, variants: tuple[Variant, ...]) -> UpdateSection:
    """``{"base_version": "2", "activate": "manual", "variants": {"fp32": {"method": "patch",
    "base_sha256": ..., "sha256": ..., "size": ...}, "int8": {"method": "full", ...},
    "f16": {"method": "reuse"}}}``; every variant needs an entry."""
    if not isinstance(raw, dict):
        raise ManifestError("update: expected an object")
    # No base version: every file travels whole (a node that holds none of the bases a fleet
    # artifact has patches from).
    base_version = raw.get("base_version", "")
    if base_version != "":
        check_version(base_version, "update.base_version")
    activate = raw.get("activate", "manual")
    if activate not in ACTIVATE:
        raise ManifestError(f"update.activate: expected one of {ACTIVATE}, got {activate!r}")
    entries = _get(raw, "variants", dict, "update.")
    by_id = {v.id: v for v in variants}
    transfers = {}
    for vid, entry in entries.items():
        where = f"update.variants.{vid}."
        variant = by_id.get(vid)
        if variant is None:
            raise ManifestError(f"update.variants.{vid}: the manifest has no variant {vid!r}")
        if not isinstance(entry, dict):
            raise ManifestError(f"update.variants.{vid}: expected an object")
        method = _get(entry, "method", str, where)
        if method not in TRANSFER_METHODS:
            raise ManifestError(
                f"{where}method: expected one of {TRANSFER_METHODS}, got {method!r}"
            )
        if method == "reuse":
            transfers[vid] = Transfer(method)
            continue
        digest, size = _digest(entry, "sha256", where), _get(entry, "size", int, where)
        if size <= 0:
            raise ManifestError(f"{where}size: must be positive, got {size}")
        if method == "full" and (digest, size) != (variant.sha256, variant.size):
            raise ManifestError(
                f"{where}sha256: a full transfer must match the variant's sha256 and size"
            )
        base = _digest(entry, "base_sha256", where) if method == "patch" else ""
        transfers[vid] = Transfer(method, digest, size, base)
    missing = sorted(set(by_id) - set(transfers))
    if missing:
        raise ManifestError(f"update.variants: no transfer given for {', '.join(missing)}")
    if not base_version and any(t.method != "full" for t in transfers.values()):
        raise ManifestError("update.base_version: needed unless every variant travels 'full'")
    sequence = raw.get("sequence")
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence <= 0:
        raise ManifestError(
            f"update.sequence: expected a positive integer (a signed counter that only moves "
            f"forward per model), got {sequence!r}"
        )
    expires = _expires(raw.get("expires"))
    targets = raw.get("targets", {})
    if not isinstance(targets, dict) or set(targets) - {"devices", "groups"}:
        raise ManifestError('update.targets: expected {"devices": [...], "groups": [...]}')
    devices, groups = (
        _names_list(targets.get(k, []), f"update.targets.{k}")
        for k in (
            "devices",
            "groups",
        )
    )
    return UpdateSection(base_version, str(activate), transfers, sequence, expires, devices, groups)


def _expires(value: object) -> float:
    """``update.expires``: an RFC 3339 time with its offset ("2027-01-01T00:00:00Z")."""
    import datetime

    if not isinstance(value, str):
        raise ManifestError(
            f"update.expires: expected an RFC 3339 time such as '2027-01-01T00:00:00Z', "
            f"got {value!r}"
        )
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ManifestError(f"update.expires: {value!r} is not an RFC 3339 time") from None
    if when.tzinfo is None:
        raise ManifestError(f"update.expires: {value!r} has no UTC offset")
    return when.timestamp()


def _names_list(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ManifestError(f"{where}: expected a list of names, got {value!r}")
    return tuple(value)


def loads(data: bytes | str) -> Manifest:
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest: not valid JSON: {exc}") from None
    return parse(raw)
