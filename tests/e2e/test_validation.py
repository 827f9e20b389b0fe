"""Variants that crash or hang their runtime never take the daemon down."""

from __future__ import annotations

import asyncio
import hashlib
import json
import queue
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from edged.portfolio.journal import LOADING, RESIDENT, CrashJournal
from edged.runtime.probe import probe
from edged.store.store import ModelStore
from tests.daemon import DaemonProcess


def corrupt_vocabulary(path: Path) -> None:
    """Rename the printable byte tokens: llama.cpp loads the file, then aborts in its tokenizer
    (an uncaught std::out_of_range) at the first prompt. A real native crash, not an error."""
    data = bytearray(path.read_bytes())
    for byte in range(0x20, 0x7F):
        old = f"<0x{byte:02X}>".encode()
        at = data.find(old)
        assert at >= 0
        data[at : at + len(old)] = f"<0y{byte:02X}>".encode()
    path.write_bytes(bytes(data))


def derived_model(
    src: Path, dst: Path, name: str, edit: Any = None, options: dict[str, Any] | None = None
) -> Path:
    """A copy of a demo model directory under a new name, its files edited, manifest fixed up."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["name"] = name
    for variant in manifest["variants"]:
        path = dst / variant["file"]
        if edit is not None:
            edit(path)
        variant["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        variant["size"] = path.stat().st_size
        if options:
            variant["options"].update(options)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_crashing_variant_is_refused_while_the_daemon_serves_others(
    demo_store: Path, demo_src: Path, tmp_path: Path
) -> None:
    store = ModelStore(demo_store)
    store.import_dir(
        derived_model(
            demo_src / "tinyllama", tmp_path / "broken", "brokenllama", corrupt_vocabulary
        )
    )
    daemon = DaemonProcess(demo_store).start()
    try:
        client = triton.InferenceServerClient(url=daemon.unix_url)
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["brokenllama"].state == "UNAVAILABLE"
        assert "crashed (SIGABRT)" in index["brokenllama"].reason
        assert index["mlp"].state == "READY"

        prompt = triton.InferInput("text_input", [1], "BYTES")
        prompt.set_data_from_numpy(np.array([b"hello"], dtype=object))
        with pytest.raises(InferenceServerException) as err:
            client.infer("brokenllama", [prompt])
        assert err.value.status() == "StatusCode.FAILED_PRECONDITION"
        assert "crashed (SIGABRT)" in err.value.message()

        # The daemon is the same process and keeps serving the healthy models.
        assert daemon.proc is not None and daemon.proc.poll() is None
        assert client.infer("tinyllama", [prompt]).as_numpy("text_output")[0]
        listing = json.loads(daemon.edged("models", "--json").stdout)
        broken = next(m for m in listing["models"] if m["name"] == "brokenllama")
        states = {v["id"]: (v["state"], v["reason"]) for v in broken["versions"][0]["variants"]}
        assert states["f16"][0] == states["q8_0"][0] == "UNUSABLE"
        assert "SIGABRT" in states["f16"][1]
        client.close()
    finally:
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.logs()


def test_a_hanging_probe_is_killed_at_the_timeout(demo_store: Path) -> None:
    store = ModelStore(demo_store)
    variant = store.manifest("mlp", "1").variant("fp32")
    result = asyncio.run(probe("onnx", store.variant_path(variant), {}, timeout=0.05))
    assert not result.usable
    assert "timed out after 0.05s" in result.reason


def test_probe_reports_a_file_the_runtime_cannot_load(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"this is not a model")
    result = asyncio.run(probe("onnx", bad, {}, timeout=60))
    assert not result.usable
    assert result.reason.startswith("the runtime could not load or run this file")


def test_journal_survives_process_death(tmp_path: Path) -> None:
    journal = CrashJournal(tmp_path / "journal")
    journal.start()
    journal.set("aaa.gguf", LOADING)
    journal.set("bbb.onnx", RESIDENT, inflight=3)
    journal.set("ccc.onnx", RESIDENT, inflight=0)
    # No stop_cleanly(): as if killed. A second mapping reads what the first one wrote.
    clean, entries = CrashJournal(tmp_path / "journal").previous_run()
    assert not clean
    assert {e.key for e in entries if e.suspect} == {"aaa.gguf", "bbb.onnx"}
    journal.stop_cleanly()
    clean, _ = CrashJournal(tmp_path / "journal").previous_run()
    assert clean


def _die_during_generation(daemon: DaemonProcess, die: Callable[[], None]) -> None:
    """``die`` (kill -9, or a fatal signal) while a long generation holds a lease on the model."""
    client = triton.InferenceServerClient(url=daemon.unix_url)
    chunks: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: chunks.put((result, error)))
    prompt = triton.InferInput("text_input", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"hello"], dtype=object))
    client.async_stream_infer("chatty", [prompt], parameters={"max_tokens": 4000, "stream": True})
    result, error = chunks.get(timeout=60)
    assert error is None and result.as_numpy("text_output") is not None
    die()
    client.close()


def _variants(daemon: DaemonProcess) -> dict[str, dict[str, Any]]:
    listing = json.loads(daemon.edged("models", "--json").stdout)
    return {v["id"]: v for v in listing["models"][0]["versions"][0]["variants"]}


def test_repeated_crashes_quarantine_the_variant(demo_src: Path, tmp_path: Path) -> None:
    """Killed from outside (kill -9: a power cut) while it generates, twice: nobody is blamed. A
    fatal signal in the daemon while it generates (a native runtime faulting), twice: the variant
    is quarantined and the model serves from its other variant; the traceback is logged."""
    root = tmp_path / "store"
    ModelStore(root).import_dir(
        derived_model(
            demo_src / "tinyllama", tmp_path / "chatty", "chatty", options={"n_ctx": 4096}
        )
    )
    for _ in range(2):
        daemon = DaemonProcess(root, validation__quarantine_after=2).start()
        _die_during_generation(daemon, daemon.kill)
    daemon = DaemonProcess(root, validation__quarantine_after=2).start()
    try:
        assert _variants(daemon)["f16"]["state"] != "QUARANTINED"
        assert "fatal signal" not in daemon.logs()
        _die_during_generation(daemon, daemon.crash)
    finally:
        daemon.kill()
    daemon = DaemonProcess(root).start()
    _die_during_generation(daemon, daemon.crash)
    daemon = DaemonProcess(root, validation__quarantine_after=2).start()
    try:
        logs = daemon.logs()
        assert "the last run died of a fatal signal" in logs
        assert "Fatal Python error: Segmentation fault" in logs  # faulthandler's traceback
        variants = _variants(daemon)
        assert variants["f16"]["state"] == "QUARANTINED"
        assert "fatal signal 2 times" in variants["f16"]["reason"]
        # The model still serves, from its other variant.
        assert variants["q8_0"]["state"] == "READY"
        client = triton.InferenceServerClient(url=daemon.unix_url)
        prompt = triton.InferInput("text_input", [1], "BYTES")
        prompt.set_data_from_numpy(np.array([b"hi"], dtype=object))
        response = client.infer("chatty", [prompt], parameters={"max_tokens": 4})
        assert response.get_response().parameters["edged_variant"].string_param == "q8_0"
        client.close()
    finally:
        daemon.stop()
    # A clean stop keeps the quarantine (it is not forgotten by restarting).
    daemon = DaemonProcess(root).start()
    try:
        listing = json.loads(daemon.edged("models", "--json").stdout)
        states = {v["id"]: v["state"] for v in listing["models"][0]["versions"][0]["variants"]}
        assert states["f16"] == "QUARANTINED"
    finally:
        daemon.stop()


def test_results_of_an_older_probe_are_measured_again() -> None:
    """A store upgraded from an older edged holds probe results measured differently (version 2
    charged every variant ~3 MB of numpy.random): they are not reused."""
    from edged.runtime.probe import PROBE_VERSION, ProbeResult

    result = ProbeResult(True, load_seconds=0.1, memory_bytes=800_000, platform="onnxruntime_onnx")
    assert ProbeResult.from_json(result.to_json()) == result
    stale = dict(result.to_json(), probe_version=PROBE_VERSION - 1, memory_bytes=3_800_000)
    assert ProbeResult.from_json(stale) is None
