"""The controller's rollout: waves over the reported states, with automatic abort (docs/fleet.md).

Nothing here dials a node. The controller reads the retained reported states of the fleet from
the broker, sets the desired state of the next wave's nodes (their device topics), and watches
their reports: each node fetches its patch, promotes the version through its own gate, shadow and
probation, and reports where it ended. A wave is done when each of its nodes reports an outcome
(or, after ``wave_timeout``, when at least ``min_reports`` of them have; fewer, and the rollout
pauses: run it again to continue). When failures among the nodes touched so far pass the abort
rule, the touched nodes are told to serve their previous version again (those whose probation
already rolled back are there already) and the rollout stops.

The controller keeps no state of its own: the waves are a function of the device ids (ordered by
a hash, so wave 1 is the same every run) and the reports, so a controller that dies is restarted
with the same command and goes on where the fleet is. Its work per report is a dict update, so it
grows with the fleet only by the reports it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Sequence

import aiomqtt

from edged.errors import EdgedError, ErrorCode
from edged.fleet import state as st

log = logging.getLogger(__name__)

DESIRED_ALL = f"{st.ROOT}/desired/device/+"


@dataclasses.dataclass(frozen=True)
class AbortRule:
    """``failed>2%`` (a share of the nodes touched so far) or ``failed>3`` (a count)."""

    limit: float
    share: bool

    @classmethod
    def parse(cls, text: str) -> AbortRule:
        match = re.fullmatch(r"\s*failed\s*>\s*(\d+(?:\.\d+)?)\s*(%?)\s*", text)
        if not match:
            raise EdgedError(
                f"--abort-if {text!r}: expected failed>N% or failed>N", ErrorCode.INVALID_ARGUMENT
            )
        return cls(float(match.group(1)) / (100 if match.group(2) else 1), bool(match.group(2)))

    def tripped(self, failed: int, touched: int) -> bool:
        return failed / max(touched, 1) > self.limit if self.share else failed > self.limit


def parse_waves(text: str) -> list[float]:
    """``1%,10%,50%,100%`` -> cumulative shares, ending at 1."""
    shares = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", part)
        if not match or not 0 < float(match.group(1)) <= 100:
            raise EdgedError(
                f"--waves {text!r}: expected shares such as 1%,10%,100%", ErrorCode.INVALID_ARGUMENT
            )
        shares.append(float(match.group(1)) / 100)
    if shares != sorted(shares) or shares[-1] != 1.0:
        raise EdgedError(
            f"--waves {text!r}: shares must grow and end at 100%", ErrorCode.INVALID_ARGUMENT
        )
    return shares


def _order(device: str) -> str:
    return hashlib.sha256(device.encode()).hexdigest()


def plan_waves(devices: Sequence[str], shares: Sequence[float]) -> list[list[str]]:
    """Each wave's new devices: the first ceil(share x n) in hash order (at least one more than
    the wave before while any are left)."""
    ordered = sorted(devices, key=_order)
    waves: list[list[str]] = []
    done = 0
    for share in shares:
        upto = min(len(ordered), max(math.ceil(share * len(ordered)), done + 1))
        if upto > done:
            waves.append(ordered[done:upto])
            done = upto
    return waves


class FleetView:
    """The fleet as the broker's retained messages say it is, kept current."""

    def __init__(self) -> None:
        self.reports: dict[str, st.Report] = {}
        self.online: dict[str, bool] = {}
        self.desired: dict[str, dict[str, st.Target]] = {}  # device -> its device-level targets
        self.changed = asyncio.Event()
        self.messages = 0
        self.dirty: set[str] = set()  # devices whose report changed since the last look

    def take(self, topic: str, payload: bytes) -> None:
        self.messages += 1
        parts = topic.split("/")
        device = parts[-1]
        if topic.startswith(f"{st.ROOT}/reported/"):
            report = st.parse_report(payload)
            if report is not None:
                self.reports[device] = report
                self.dirty.add(device)
        elif topic.startswith(f"{st.ROOT}/online/"):
            self.online[device] = payload == b"1"
        elif topic.startswith(f"{st.ROOT}/desired/device/"):
            with contextlib.suppress(st.DesiredStateError):
                self.desired[device] = st.parse_desired(payload, topic)
        self.changed.set()

    def take_dirty(self) -> set[str]:
        dirty, self.dirty = self.dirty, set()
        return dirty

    def devices(self, group: str = "") -> list[str]:
        return sorted(
            d
            for d, r in self.reports.items()
            if self.online.get(d, True) and (not group or group in r.groups)
        )

    def outcome(self, device: str, model: str, version: str) -> str:
        report = self.reports.get(device)
        entry = report.models.get(model) if report else None
        return entry.outcome(version) if entry else "pending"


async def follow(client: aiomqtt.Client, view: FleetView, settle: float) -> asyncio.Task[None]:
    """Subscribe the view to the fleet's topics; returns once the retained messages stopped
    arriving for ``settle`` seconds (the broker sends them all at subscribe)."""
    await client.subscribe([(st.REPORTED_ALL, 1), (st.ONLINE_ALL, 1), (DESIRED_ALL, 1)])

    async def pump() -> None:
        async for message in client.messages:
            payload = message.payload
            data = bytes(payload) if isinstance(payload, (bytes, bytearray)) else b""
            view.take(str(message.topic), data)

    task = asyncio.ensure_future(pump())
    while True:
        view.changed.clear()
        try:
            await asyncio.wait_for(view.changed.wait(), settle)
        except TimeoutError:
            return task


@dataclasses.dataclass
class RolloutResult:
    state: str  # "done", "aborted", "paused"
    waves: list[list[str]]
    outcomes: dict[str, str]  # device -> outcome, for every touched device
    reason: str = ""
    controller_seconds: float = 0.0  # CPU time of the controller's decisions

    @property
    def failed(self) -> list[str]:
        return sorted(d for d, o in self.outcomes.items() if o in st.FINAL_FAILED)


async def rollout(
    client: aiomqtt.Client,
    view: FleetView,
    model: str,
    version: str,
    shares: Sequence[float],
    abort: AbortRule,
    *,
    min_reports: int = 1,
    group: str = "",
    wave_timeout: float = 900.0,
    say: Callable[[str], None] = lambda _: None,
) -> RolloutResult:
    """Roll ``model`` ``version`` out in waves; ``view`` must already follow the fleet."""
    rollout_id = f"{model}-{version}-{int(time.time())}"
    devices = view.devices(group)
    if not devices:
        raise EdgedError(f"no online node reports{' in group ' + group if group else ''}")
    previous = {
        d: view.reports[d].models.get(model, st.ModelReport("", {})).serving for d in devices
    }
    waves = plan_waves(devices, shares)
    touched: list[str] = []
    cpu = 0.0
    # Outcomes are kept up to date from the reports that changed, not recomputed per wake-up:
    # the controller's work is one look per report read, whatever the fleet's size.
    outcomes: dict[str, str] = {}
    counts = {"failed": 0}
    final_in: dict[int, int] = {}
    wave_of: dict[str, int] = {}

    def note(device: str) -> None:
        old, new = outcomes.get(device, "pending"), view.outcome(device, model, version)
        if old == new:
            return
        outcomes[device] = new
        counts["failed"] += (new in st.FINAL_FAILED) - (old in st.FINAL_FAILED)
        k = wave_of[device]
        final_in[k] = final_in.get(k, 0) + (new != "pending") - (old != "pending")

    for number, wave in enumerate(waves, 1):
        started = time.process_time()
        for device in wave:
            targets = dict(view.desired.get(device, {}))
            targets[model] = st.Target(version=version, rollout=rollout_id)
            await client.publish(
                st.device_topic(device), st.desired_payload(targets), qos=1, retain=True
            )
            wave_of[device] = number
            outcomes[device] = "pending"
            note(device)  # already there from an earlier run
        touched += wave
        cpu += time.process_time() - started
        say(f"wave {number}/{len(waves)}: {len(wave)} nodes ({len(touched)}/{len(devices)})")
        deadline = time.monotonic() + wave_timeout
        while True:
            started = time.process_time()
            for device in view.take_dirty():
                if device in wave_of:
                    note(device)
            failed, final = counts["failed"], final_in.get(number, 0)
            cpu += time.process_time() - started
            if abort.tripped(failed, len(touched)):
                reason = f"{failed} of {len(touched)} nodes failed"
                say(f"abort: {reason}; the touched nodes go back to their previous version")
                await _set_back(client, view, model, previous, touched, rollout_id)
                return RolloutResult("aborted", waves[:number], dict(outcomes), reason, cpu)
            if final == len(wave):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                if final >= min(min_reports, len(wave)):
                    break
                reason = (
                    f"wave {number}: {final} of {len(wave)} nodes reported in {wave_timeout:.0f}s"
                )
                say(f"paused: {reason} (run the rollout again to continue)")
                return RolloutResult("paused", waves[:number], dict(outcomes), reason, cpu)
            view.changed.clear()
            if view.dirty:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(view.changed.wait(), min(left, 5.0))
        say(f"wave {number}: {final} of {len(wave)} reported, {failed} failed so far")
    return RolloutResult("done", waves, dict(outcomes), "", cpu)


async def _set_back(
    client: aiomqtt.Client,
    view: FleetView,
    model: str,
    previous: dict[str, str],
    touched: list[str],
    rollout_id: str,
) -> None:
    for device in touched:
        targets = dict(view.desired.get(device, {}))
        if previous.get(device):
            targets[model] = st.Target(version=previous[device], rollout=f"{rollout_id}-abort")
        else:
            targets.pop(model, None)
        await client.publish(
            st.device_topic(device), st.desired_payload(targets), qos=1, retain=True
        )


def status_table(view: FleetView, model: str = "") -> list[tuple[str, str, str, int]]:
    """(model, version, state, nodes) for every version some node holds, and who serves what."""
    counts: dict[tuple[str, str, str], int] = {}
    for device, report in view.reports.items():
        online = view.online.get(device, True)
        for name, entry in report.models.items():
            if (model and name != model) or name == "*":
                continue
            for version, state in entry.versions.items():
                label = state + (" (serving)" if version == entry.serving else "")
                if not online:
                    label += " [offline]"
                counts[(name, version, label)] = counts.get((name, version, label), 0) + 1
            if entry.error:
                key = (name, entry.target or "?", "error: " + entry.error[:80])
                counts[key] = counts.get(key, 0) + 1
    return sorted((m, v, s, n) for (m, v, s), n in counts.items())
