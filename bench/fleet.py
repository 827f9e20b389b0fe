"""Fleet rollouts on the real registry and broker (docs/fleet.md): bytes per node, wave time,
controller work as the fleet grows.

1. **Bytes per node** for a fine-tune through the registry, against the whole files: an fp32 MLP
   (256-2048-2048-10, ~21 MB) and its int8 (re-quantized from the fine-tune), v2 = every fp32
   weight moved ~0.1%. Measured by a node's pull (what its report says it fetched).
2. **Wave time**: ``--nodes`` simulated nodes in this process, each the real pull code
   (``FleetAgent``: MQTT, registry, the update session, the receiver, patch apply, the store)
   over a lifecycle that commits what it is told to activate (no runtimes: the promotion's own
   time is measured in bench/swap.py); a rollout in waves 10%,50%,100%, from the desired state
   set to the last report of the wave.
3. **Controller work per rollout** as the fleet grows: 10, 100 and 1000 nodes answered by one
   MQTT connection (each node's reported state, committed shortly after its desired state
   arrives), the controller the real ``edged fleet rollout`` CLI in its own process: its CPU time
   (getrusage of the child) and the part spent in its own decisions.

    .venv/bin/python bench/fleet.py [--nodes 20] [--sizes 10 100 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edged import settings as settings_mod  # noqa: E402
from edged.adapters.fleet import FleetAgent  # noqa: E402
from edged.events import NoEvents  # noqa: E402
from edged.fleet import state as st  # noqa: E402
from edged.fleet.oci import Registry as RegistryClient  # noqa: E402
from edged.fleet.publish import publish  # noqa: E402
from edged.serving.updates import UpdateService  # noqa: E402
from edged.serving.views import IndexEntry, LineageView, VersionStateView  # noqa: E402
from edged.store.store import ModelStore  # noqa: E402
from edged.store.versions import VersionState  # noqa: E402
from edged.update import signing  # noqa: E402
from edged.update.node.receiver import UpdateReceiver  # noqa: E402
from edged.update.signing import TrustedKeys  # noqa: E402
from tests.fleet_servers import MOSQUITTO, REGISTRY, Broker, Registry  # noqa: E402

MODEL = "ranker"


class SimLifecycle:
    """Commits what it is told to activate (the promotion's time is not what this measures)."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store

    def versions(self, model: str) -> list[VersionStateView]:
        active = self.store.active(model)
        out = []
        for v in self.store.versions(model):
            r = self.store.record(model, v)
            lineage = LineageView("", "", "", "", "")
            out.append(
                VersionStateView(
                    v, str(r.state), "", r.reason, v == active, r.since, r.requested, {}, lineage
                )
            )
        return out

    def activate(self, model: str, version: str) -> None:
        record = self.store.record(model, version).moved(VersionState.COMMITTED, "simulated")
        self.store.put_record(model, version, record)
        self.store.set_active(model, version)

    async def rollback(self, model: str, to: str = "", undo: str = "") -> None:
        self.activate(model, to)

    async def cancel(self, model: str, reason: str) -> list[str]:
        return []


class SimRepository:
    def __init__(self, store: ModelStore) -> None:
        self.store = store

    def index(self) -> list[IndexEntry]:
        return [IndexEntry(m, self.store.active(m) or "", "READY", "") for m in self.store.models()]


def sim_node(
    root: Path, device: str, v1: Path, broker: str, registry: str, keys: Path
) -> FleetAgent:
    store = ModelStore(root)
    store.import_dir(v1)
    receiver = UpdateReceiver(store, TrustedKeys.load([keys]))
    updates = UpdateService(receiver, NoEvents(), 0, lambda _: None)
    fleet = settings_mod.FleetSettings.model_validate(
        {
            "enabled": True,
            "device_id": device,
            "groups": ["bench"],
            "broker": broker,
            "registry": registry,
            "jitter_seconds": 0.0,
            "retry_seconds": 1.0,
            "report_interval_seconds": 1.0,
        }
    )
    return FleetAgent(fleet, updates, SimLifecycle(store), SimRepository(store))  # type: ignore[arg-type]


def versions(work: Path) -> tuple[Path, Path]:
    from edged.demo import quantize_int8
    from edged.update.synthetic import finetune
    from tests.portfolios import mlp_family

    v1 = mlp_family(work / "v1", MODEL, (256, 2048, 2048, 10), seed=5)
    v2 = work / "v2" / MODEL
    shutil.copytree(v1, v2)
    raw = json.loads((v2 / "manifest.json").read_text())
    raw["version"] = "2"
    finetune(v1 / "model.fp32.onnx", v2 / "model.fp32.onnx", fraction=1.0, relative=1e-3, seed=1)
    quantize_int8(v2 / "model.fp32.onnx", v2 / "model.int8.onnx")
    import hashlib

    for variant in raw["variants"]:
        data = (v2 / variant["file"]).read_bytes()
        variant["sha256"], variant["size"] = hashlib.sha256(data).hexdigest(), len(data)
    (v2 / "manifest.json").write_text(json.dumps(raw))
    return v1, v2


async def wave_bench(
    work: Path, nodes: int, v1: Path, v2: Path, broker: Broker, registry: Registry
) -> dict[str, Any]:
    import aiomqtt

    from edged.fleet import rollout as ro

    signing.keygen(work / "k")
    keys = work / "keys"
    keys.mkdir()
    shutil.copy(work / "k.pub", keys / "k.pub")
    async with RegistryClient(registry.url) as client:
        await publish(client, "edged", v1, work / "k", work / "p1")
        published = await publish(client, "edged", v2, work / "k", work / "p2")
    agents = [
        sim_node(work / f"node{i}", f"sim-{i:04d}", v1, broker.url, registry.url, keys)
        for i in range(nodes)
    ]
    tasks = [asyncio.ensure_future(a.run()) for a in agents]
    times: list[tuple[float, str]] = []
    try:
        view = ro.FleetView()
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-controller") as mqtt:
            pump = await ro.follow(mqtt, view, 1.0)
            while len(view.devices()) < nodes:
                view.changed.clear()
                await asyncio.wait_for(view.changed.wait(), 30)
            started = time.perf_counter()
            result = await ro.rollout(
                mqtt,
                view,
                MODEL,
                "2",
                ro.parse_waves("10%,50%,100%"),
                ro.AbortRule.parse("failed>10%"),
                say=lambda line: times.append((time.perf_counter() - started, line)),
            )
            total = time.perf_counter() - started
            pump.cancel()
        fetched = [a._status.get(MODEL, {}).get("bytes_fetched", 0) for a in agents]
    finally:
        for t in tasks:
            t.cancel()
        for a in agents:
            await a.close()
    wave_done = [t for t, line in times if line.startswith("wave") and "reported" in line]
    starts = [t for t, line in times if line.startswith("wave") and "nodes (" in line]
    return {
        "nodes": nodes,
        "state": result.state,
        "outcomes": sorted(set(result.outcomes.values())),
        "waves": [len(w) for w in result.waves],
        "wave_seconds": [round(d - s, 2) for s, d in zip(starts, wave_done, strict=False)],
        "total_seconds": round(total, 2),
        "whole_bytes": published.whole_bytes,
        "patch_bytes": published.patch_bytes.get("1", 0),
        "fetched_median": sorted(fetched)[len(fetched) // 2],
        "fetched_max": max(fetched),
    }


async def simulate_fleet(
    broker: Broker, size: int, ready: asyncio.Event, stop: asyncio.Event
) -> None:
    """``size`` nodes behind one MQTT connection: each reports serving 1, and reports the
    desired version committed 50-200 ms after its desired state arrives."""
    import aiomqtt

    def report(device: str, serving: str) -> bytes:
        versions = (
            {"1": "committed"} if serving == "1" else {"1": "committed", serving: "committed"}
        )
        model = {
            "serving": serving,
            "versions": versions,
            "target": serving,
            "error": "",
            "bytes_fetched": 0,
            "method": "",
        }
        return json.dumps(
            {"device": device, "groups": ["bench"], "time": time.time(), "models": {MODEL: model}}
        ).encode()

    async with aiomqtt.Client(
        "127.0.0.1", broker.port, identifier=f"sim-fleet-{size}", max_queued_outgoing_messages=0
    ) as client:
        devices = [f"d{size}-{i:05d}" for i in range(size)]
        for d in devices:
            await client.publish(st.reported_topic(d), report(d, "1"), qos=1, retain=True)
            await client.publish(st.online_topic(d), b"1", qos=1, retain=True)
        await client.subscribe(f"{st.ROOT}/desired/device/+", qos=1)
        ready.set()

        async def answer(device: str, version: str) -> None:
            await asyncio.sleep(random.uniform(0.05, 0.2))
            await client.publish(
                st.reported_topic(device), report(device, version), qos=1, retain=True
            )

        pending: set[asyncio.Task[None]] = set()
        async for message in client.messages:
            device = str(message.topic).rsplit("/", 1)[-1]
            if not device.startswith(f"d{size}-"):
                continue
            payload = message.payload if isinstance(message.payload, bytes) else b""
            targets = st.parse_desired(payload, str(message.topic)) if payload else {}
            if MODEL in targets:
                task = asyncio.ensure_future(answer(device, targets[MODEL].version))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if stop.is_set():
                break


async def controller_bench(broker: Broker, size: int) -> dict[str, Any]:
    ready, stop = asyncio.Event(), asyncio.Event()
    fleet = asyncio.ensure_future(simulate_fleet(broker, size, ready, stop))
    await asyncio.wait_for(ready.wait(), 120)
    code = (
        "import asyncio, json, sys; from edged.fleet import rollout as ro\n"
        "from edged.fleet.mqtt import client_for\n"
        "async def main():\n"
        "    view = ro.FleetView()\n"
        "    async with client_for(sys.argv[1], 'bench-ctl') as c:\n"
        "        pump = await ro.follow(c, view, 1.0)\n"
        "        r = await ro.rollout(c, view, sys.argv[2], '2', ro.parse_waves('1%,10%,50%,100%'),"
        " ro.AbortRule.parse('failed>2%'), group=sys.argv[3])\n"
        "        pump.cancel()\n"
        "        print(json.dumps({'state': r.state, 'decisions': r.controller_seconds,"
        " 'messages': view.messages, 'nodes': len(r.outcomes)}))\n"
        "asyncio.run(main())\n"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # Asynchronously: the simulated fleet answers on this event loop meanwhile.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, broker.url, MODEL, "bench", stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await proc.communicate()
    assert proc.returncode == 0
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stop.set()
    fleet.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await fleet
    out = json.loads(stdout.decode().strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "fleet": size,
        "cpu_seconds": round(cpu, 3),
        "decision_seconds": round(out["decisions"], 4),
        "wall_seconds": round(wall, 2),
        "messages": out["messages"],
        "nodes": out["nodes"],
        "state": out["state"],
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="edged-fleet-bench-"))
    registry = Registry(work / "registry").start()
    broker = Broker(work / "broker").start()
    try:
        v1, v2 = versions(work / "src")
        waves = await wave_bench(work / "waves", args.nodes, v1, v2, broker, registry)
        print(json.dumps(waves), flush=True)
        controller = []
        for size in args.sizes:
            fresh = Broker(
                work / f"broker-{size}"
            ).start()  # a broker of its own: no other retained state
            try:
                row = await controller_bench(fresh, size)
            finally:
                fresh.stop()
            print(json.dumps(row), flush=True)
            controller.append(row)
        return {"waves": waves, "controller": controller}
    finally:
        broker.stop()
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "fleet.json"))
    args = parser.parse_args()
    if not (REGISTRY and MOSQUITTO):
        print("needs docker-registry and mosquitto (apt-get install docker-registry mosquitto)")
        return 1
    result = asyncio.run(main_async(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    w = result["waves"]
    ratio = w["fetched_median"] / w["whole_bytes"]
    print()
    print(
        f"bytes per node: {w['fetched_median']} B fetched (median) against whole files "
        f"{w['whole_bytes']} B = {ratio:.3f}x"
    )
    print(
        f"{w['nodes']} simulated nodes, waves {w['waves']}: {w['wave_seconds']} s per wave, "
        f"{w['total_seconds']} s in all ({w['state']})"
    )
    print("| fleet | controller CPU s | decisions s | CPU per node ms | reports read | wall s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in result["controller"]:
        per_node = 1000 * r["cpu_seconds"] / r["fleet"]
        print(
            f"| {r['fleet']} | {r['cpu_seconds']} | {r['decision_seconds']} | {per_node:.2f} | "
            f"{r['messages']} | {r['wall_seconds']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
