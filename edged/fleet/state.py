"""The MQTT control plane: topics, and the desired and reported states that travel on them.

Topics (docs/fleet.md), all QoS 1 and retained, so a node that connects late, or a controller that
starts after the fleet, reads the last word at once::

    edged/v1/desired/group/<group>     what every node of a group should serve
    edged/v1/desired/device/<device>   what one node should serve (a rollout's waves): over groups
    edged/v1/reported/<device>         what a node serves and holds, per model and version
    edged/v1/online/<device>           "1" while connected; the broker's last will sets "0"

A desired state names, per model, a ``version`` (the tag ``v<version>``) or a ``channel`` (a tag
such as ``stable``), and whether the node promotes it when it arrives (``activate``: "immediate",
the default, or "staged"). Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

from edged.errors import EdgedError, ErrorCode, ManifestError
from edged.names import check_name, check_version

ROOT = "edged/v1"
MAX_MESSAGE_BYTES = 256 << 10


def group_topic(group: str) -> str:
    return f"{ROOT}/desired/group/{group}"


def device_topic(device: str) -> str:
    return f"{ROOT}/desired/device/{device}"


def reported_topic(device: str) -> str:
    return f"{ROOT}/reported/{device}"


def online_topic(device: str) -> str:
    return f"{ROOT}/online/{device}"


REPORTED_ALL = f"{ROOT}/reported/+"
ONLINE_ALL = f"{ROOT}/online/+"


class DesiredStateError(EdgedError):
    def __init__(self, message: str) -> None:
        super().__init__(message, ErrorCode.INVALID_ARGUMENT)


@dataclasses.dataclass(frozen=True)
class Target:
    """What one model should serve."""

    version: str = ""
    channel: str = ""
    activate: bool = True
    rollout: str = ""  # the rollout that set it, reported back

    @property
    def reference(self) -> str:
        return f"v{self.version}" if self.version else self.channel

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = (
            {"version": self.version} if self.version else {"channel": self.channel}
        )
        if not self.activate:
            out["activate"] = "staged"
        if self.rollout:
            out["rollout"] = self.rollout
        return out


def parse_desired(payload: bytes, where: str) -> dict[str, Target]:
    """``{"models": {"ocr": {"version": "3"}, "asr": {"channel": "stable", "activate":
    "staged"}}}`` -> targets by model; an error names the key that is wrong."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise DesiredStateError(f"{where}: larger than {MAX_MESSAGE_BYTES} bytes")
    if not payload:
        return {}  # a retained message cleared
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise DesiredStateError(f"{where}: not JSON ({e})") from None
    models = document.get("models") if isinstance(document, dict) else None
    if not isinstance(models, dict):
        raise DesiredStateError(f'{where}: expected {{"models": {{...}}}}')
    targets = {}
    for name, entry in models.items():
        key = f"{where}: models.{name}"
        try:
            check_name(name, key)
            if not isinstance(entry, dict):
                raise DesiredStateError(f"{key}: expected an object")
            version, channel = entry.get("version", ""), entry.get("channel", "")
            if bool(version) == bool(channel):
                raise DesiredStateError(f"{key}: give a version or a channel (one of them)")
            if version:
                check_version(version, f"{key}.version")
            if channel and (
                not isinstance(channel, str) or not channel[:1].isalnum() or len(channel) > 128
            ):
                raise DesiredStateError(f"{key}.channel: {channel!r} is not a tag")
            activate = entry.get("activate", "immediate")
            if activate not in ("immediate", "staged"):
                raise DesiredStateError(f"{key}.activate: expected 'immediate' or 'staged'")
            rollout = entry.get("rollout", "")
            if not isinstance(rollout, str):
                raise DesiredStateError(f"{key}.rollout: expected a string")
        except ManifestError as e:
            raise DesiredStateError(e.message) from None
        targets[name] = Target(version, channel, activate == "immediate", rollout)
    return targets


def desired_payload(targets: Mapping[str, Target]) -> bytes:
    return json.dumps({"models": {m: t.to_json() for m, t in sorted(targets.items())}}).encode()


def merge(layers: Iterable[Mapping[str, Target]]) -> dict[str, Target]:
    """Later layers win, model by model (groups in the node's order, then the device's own)."""
    merged: dict[str, Target] = {}
    for layer in layers:
        merged.update(layer)
    return merged


# -- reported state ---------------------------------------------------------------------------

FINAL_OK = "committed"
FINAL_FAILED = ("rejected", "rolled_back", "refused")


@dataclasses.dataclass(frozen=True)
class ModelReport:
    serving: str
    versions: dict[str, str]  # version -> lifecycle state
    target: str = ""  # the version the desired state resolved to
    error: str = ""
    bytes_fetched: int = 0  # for the target version, this run
    method: str = ""  # "patch from <base>" or "whole files"

    def outcome(self, version: str) -> str:
        """Where ``version`` stands on this node: committed, rejected, rolled_back, refused (the
        node would not take it: the reason is ``error``), or pending."""
        state = self.versions.get(version, "")
        if self.serving == version and state == "committed":
            return FINAL_OK
        if state in ("rejected", "rolled_back"):
            return state
        if self.target == version and self.error and not state:
            return "refused"
        return "pending"


@dataclasses.dataclass(frozen=True)
class Report:
    device: str
    groups: tuple[str, ...]
    time: float
    models: dict[str, ModelReport]

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "groups": list(self.groups),
            "time": self.time,
            "models": {m: dataclasses.asdict(r) for m, r in sorted(self.models.items())},
        }


def parse_report(payload: bytes) -> Report | None:
    """A node's reported state; None for what is not one (a cleared topic, garbage)."""
    try:
        d = json.loads(payload)
        models = {
            str(name): ModelReport(
                str(m.get("serving", "")),
                {str(k): str(v) for k, v in (m.get("versions") or {}).items()},
                str(m.get("target", "")),
                str(m.get("error", "")),
                int(m.get("bytes_fetched", 0)),
                str(m.get("method", "")),
            )
            for name, m in (d.get("models") or {}).items()
        }
        return Report(
            str(d["device"]), tuple(d.get("groups") or ()), float(d.get("time", 0)), models
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
