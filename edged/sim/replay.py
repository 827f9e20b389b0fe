"""`edged trace replay`: a trace against the real daemon (wall clock, time-compressed), or against
the daemon's residency engine in simulated time (edged/sim)."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from edged.adapters.grpc import convert
from edged.api import inference_pb2 as pb
from edged.api import inference_pb2_grpc as pb_grpc
from edged.portfolio.scoring import Option
from edged.runtime.base import TensorSpec, example_inputs
from edged.runtime.probe import stored_result
from edged.settings import PreloadSettings, ResidencySettings
from edged.sim.baselines import GdsfPolicy, HybridHistogramPolicy, LruPolicy, OllamaPolicy
from edged.sim.edged_policy import EdgedPolicy
from edged.sim.policy import Options, Policy, replay
from edged.store.store import ModelStore


@dataclasses.dataclass
class Replayed:
    model: str
    ok: bool
    cold: bool
    latency_ms: float
    error: str = ""


async def _request_for(
    stub: pb_grpc.GRPCInferenceServiceStub, model: str, timeout: float
) -> pb.ModelInferRequest:
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=timeout)
    specs = tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in meta.inputs)
    request = pb.ModelInferRequest(model_name=model)
    if meta.platform.startswith("llama"):
        request.parameters["max_tokens"].int64_param = 1
    convert.add_inputs(request, example_inputs(specs))
    return request


async def replay_against_daemon(
    address: str, events: Sequence[tuple[float, str]], speed: float, timeout: float = 60.0
) -> list[Replayed]:
    """Send each event's request at its time / ``speed`` (requests overlap as in the trace)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        requests = {m: await _request_for(stub, m, timeout) for m in sorted({m for _, m in events})}

        async def one(model: str) -> Replayed:
            start = time.perf_counter()
            try:
                response = await stub.ModelInfer(requests[model], timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                elapsed = (time.perf_counter() - start) * 1e3
                return Replayed(model, False, False, elapsed, f"{exc.code().name}: {exc.details()}")
            elapsed = (time.perf_counter() - start) * 1e3
            return Replayed(model, True, response.parameters["edged_cold"].bool_param, elapsed)

        origin = events[0][0] if events else 0.0
        start = time.monotonic()
        tasks = []
        for t, model in events:
            delay = (t - origin) / speed - (time.monotonic() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(model)))
        return list(await asyncio.gather(*tasks))


def summarize(results: Sequence[Replayed]) -> str:
    if not results:
        return "no requests"
    ok = [r for r in results if r.ok]
    cold = sum(r.cold for r in ok)
    latencies = sorted(r.latency_ms for r in ok) or [0.0]
    lines = [
        f"requests {len(results)}  ok {len(ok)}  failed {len(results) - len(ok)}  "
        f"cold {cold} ({cold / max(len(ok), 1):.1%})",
        f"latency ms: p50 {statistics.median(latencies):.2f}  "
        f"p99 {latencies[min(int(len(latencies) * 0.99), len(latencies) - 1)]:.2f}  "
        f"max {latencies[-1]:.2f}",
    ]
    by_model: dict[str, int] = {}
    for r in ok:
        by_model[r.model] = by_model.get(r.model, 0) + r.cold
    lines.append("cold by model: " + " ".join(f"{m}={n}" for m, n in sorted(by_model.items())))
    errors = sorted({r.error for r in results if not r.ok})
    lines += [f"error: {e}" for e in errors[:5]]
    return "\n".join(lines)


def store_options(root: Path) -> Options:
    """Per model of the store at ``root``, its active version's validated variants with their
    measured cost."""
    store = ModelStore(root)
    options: Options = {}
    for name in store.models():
        active = store.active(name)
        if active is None:
            continue
        out = []
        for v in store.manifest(name, active).variants:
            result = stored_result(store, v)
            if result is not None and result.usable:
                out.append(
                    Option(v.id, max(result.memory_bytes, 1), v.quality, result.load_seconds)
                )
        if out:
            options[name] = out
    return options


def simulate(
    options: Options,
    events: Sequence[tuple[float, str]],
    budget: int,
    residency: ResidencySettings,
    preload: PreloadSettings,
    pinned: frozenset[str] = frozenset(),
) -> list[tuple[str, dict[str, float]]]:
    """The configured daemon's residency (its own engine and settings) and the baselines."""
    known = [(t, m) for t, m in events if m in options]
    policies: list[Policy] = [
        EdgedPolicy(options, budget, residency, preload, start_loaded=True, pinned=pinned),
        EdgedPolicy(options, budget, residency, start_loaded=True, pinned=pinned),
    ]
    for cls in (LruPolicy, OllamaPolicy, GdsfPolicy, HybridHistogramPolicy):
        policies += [cls(options, budget, "best"), cls(options, budget, "smallest")]
    return [(p.name, replay(p, known)) for p in policies]
