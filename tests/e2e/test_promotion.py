"""Promotions on the real daemon under real load: tritonclient on the swapped model and on a
bystander, ten promotions in a row, then the operator's commands; and kill -9 at random instants
of promotions."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from edged.api import lifecycle_pb2 as lpb
from edged.api import lifecycle_pb2_grpc as lpb_grpc
from edged.store.store import ModelStore
from edged.store.versions import VersionState
from tests.daemon import DaemonProcess, wait_for
from tests.versions import SIZES, version_dir

pytestmark = pytest.mark.e2e


def versions_of(src: Path, count: int) -> list[Path]:
    """Versions 1..count of "m": the same network, its scores scaled a little more each time
    (a new file every time, the same answers)."""
    return [
        version_dir(
            src,
            "m",
            str(k),
            scale=1.0 + 0.01 * k,
            lineage={"parent": str(k - 1) if k > 1 else None, "dataset": f"d{k}"},
        )
        for k in range(1, count + 1)
    ]


class Load(threading.Thread):
    """A client sending requests one after another; it notes each answer's version or error."""

    def __init__(self, url: str, model: str) -> None:
        super().__init__(daemon=True)
        self.url, self.model = url, model
        self.answers: list[tuple[float, str]] = []  # (when it was sent, version)
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        client = triton.InferenceServerClient(url=self.url)
        rng = np.random.default_rng(hash(self.model) % 1000)
        try:
            while not self.stop.is_set():
                data = triton.InferInput("input", [1, SIZES[0]], "FP32")
                data.set_data_from_numpy(rng.standard_normal((1, SIZES[0])).astype(np.float32))
                sent = time.monotonic()
                try:
                    result = client.infer(self.model, [data], client_timeout=30)
                    self.answers.append((sent, result.get_response().model_version))
                except Exception as exc:
                    self.errors.append(str(exc))
        finally:
            client.close()


def lifecycle(url: str) -> Any:
    return lpb_grpc.LifecycleStub(grpc.insecure_channel(url))


def test_ten_promotions_under_load_fail_no_request(tmp_path: Path) -> None:
    src = tmp_path / "src"
    store = ModelStore(tmp_path / "store")
    for directory in versions_of(src, 11):
        store.import_dir(directory, activate=False)
    store.import_dir(version_dir(src, "bystander", "1", seed=3))
    daemon = DaemonProcess(store.root, preload__enabled=False).start()
    loads = [
        Load(daemon.unix_url, "m"),
        Load(daemon.unix_url, "m"),
        Load(daemon.tcp_url, "bystander"),
    ]
    stub = lifecycle(daemon.admin_url)
    try:
        for load in loads:
            load.start()
        wait_for(lambda: all(len(load.answers) > 20 for load in loads), 30, "steady load")
        for version in map(str, range(2, 12)):
            stub.Activate(lpb.ActivateRequest(model="m", version=version), timeout=30)
            wait_for(
                lambda v=version: (
                    store.record("m", v).state not in ("candidate", "probation", "staged")
                ),
                120,
                f"the promotion of {version}",
            )
            assert store.record("m", version).state is VersionState.COMMITTED, store.record(
                "m", version
            )
            assert store.active("m") == version
        for load in loads:
            load.stop.set()
        for load in loads:
            load.join(30)
        assert [e for load in loads for e in load.errors] == []
        for load in loads[:2]:
            served = [int(v) for _, v in load.answers]
            assert served == sorted(served), "an answer from an older version came after a newer"
            assert served[-1] == 11
        assert {v for _, v in loads[2].answers} == {"1"}

        # The operator's view and commands.
        versions = daemon.edged("versions", "m")
        assert versions.returncode == 0, versions.stderr
        assert "*11 " in versions.stdout and "committed" in versions.stdout
        tree = daemon.edged("lineage", "m")
        assert tree.returncode == 0 and "dataset: d10 -> d11" in tree.stdout, tree.stdout
        back = daemon.edged("rollback", "m", "--to", "9")
        assert back.returncode == 0, back.stderr
        assert "version 9 serves" in back.stdout
        assert store.active("m") == "9"
        assert store.record("m", "11").state is VersionState.ROLLED_BACK
        index = triton.InferenceServerClient(url=daemon.unix_url)
        entries = [(m.name, m.version, m.state) for m in index.get_model_repository_index().models]
        index.close()
        assert ("m", "9", "READY") in entries and ("m", "11", "UNAVAILABLE") in entries
        assert entries.index(("m", "9", "READY")) > entries.index(("m", "11", "UNAVAILABLE"))
    finally:
        for load in loads:
            load.stop.set()
        daemon.stop()


def test_kill_9_at_random_instants_of_promotions(tmp_path: Path) -> None:
    """20 trials: a promotion is started, the daemon killed (-9) at a random instant of it and
    started again. Every time the committed version serves at once, the records agree (one
    committed version, at most one under evaluation), and the promotion starts again."""
    src = tmp_path / "src"
    store = ModelStore(tmp_path / "store")
    trials = 20
    for directory in versions_of(src, trials + 1):
        store.import_dir(directory, activate=False)
    daemon = DaemonProcess(store.root, preload__enabled=False).start()
    rng = random.Random(7)
    seen: dict[str, int] = {}
    try:
        for trial in range(trials):
            version = str(trial + 2)
            with grpc.insecure_channel(daemon.admin_url) as channel:
                lpb_grpc.LifecycleStub(channel).Activate(
                    lpb.ActivateRequest(model="m", version=version), timeout=30
                )
            time.sleep(rng.uniform(0.0, 6.0))
            daemon.kill()
            killed = time.time()
            daemon.start()
            committed = store.active("m")
            assert committed is not None
            assert store.record("m", committed).state is VersionState.COMMITTED
            client = triton.InferenceServerClient(url=daemon.unix_url)
            data = triton.InferInput("input", [1, SIZES[0]], "FP32")
            data.set_data_from_numpy(np.ones((1, SIZES[0]), np.float32))
            served = client.infer("m", [data]).get_response().model_version
            client.close()
            assert served == committed
            records = {v: store.record("m", v) for v in store.versions("m")}
            assert [v for v, r in records.items() if r.state == "probation"] == []
            committed_ones = [v for v, r in records.items() if r.state == "committed"]
            assert committed in committed_ones
            for record in records.values():
                if record.since >= killed and record.reason.startswith("restarted"):
                    where = record.reason.split("while ")[-1].split(" during ")[-1]
                    seen[where] = seen.get(where, 0) + 1
    finally:
        daemon.stop()
    # The kills landed in more than one phase of a promotion.
    assert len(seen) >= 2, seen
    print("interrupted at:", seen)


def test_sighup_and_repository_load_start_promotions_and_metrics_show_them(
    tmp_path: Path,
) -> None:
    """`edged import` of a new version then SIGHUP promotes it; RepositoryModelLoad on a model
    with a newer staged version promotes that one; RepositoryIndex moves nothing; the metrics
    show the serving version, the promotions and what the requests were answered by."""
    import signal

    from tests.daemon import free_port, scrape

    src = tmp_path / "src"
    v1, v2, v3 = versions_of(src, 3)
    store = ModelStore(tmp_path / "store")
    store.import_dir(v1)
    port = free_port()
    daemon = DaemonProcess(
        store.root, preload__enabled=False, metrics__address=f"127.0.0.1:{port}"
    ).start()
    load = Load(daemon.unix_url, "m")
    try:
        load.start()
        imported = daemon.edged("import", str(v2))
        assert imported.returncode == 0, imported.stderr
        client = triton.InferenceServerClient(url=daemon.unix_url)
        client.get_model_repository_index()  # read-only: nothing starts
        time.sleep(1.0)
        assert store.record("m", "2").state is VersionState.STAGED
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: store.active("m") == "2", 120, "the promotion started by SIGHUP")
        assert daemon.edged("import", "--no-activate", str(v3)).returncode == 0
        # RepositoryModelLoad (an operator's call: the admin socket) promotes the newer
        # staged version.
        with triton.InferenceServerClient(url=daemon.admin_url) as admin:
            admin.load_model("m")
        wait_for(lambda: store.active("m") == "3", 120, "the promotion started by load_model")
        client.close()
        wait_for(lambda: any(v == "3" for _, v in load.answers[-5:]), 30, "version 3 answers")
        # The commit moves the store's pointer first and then counts the outcome (a crash in
        # between leaves the version committed): the counter may trail the pointer briefly.
        committed = 'edged_promotions_total{outcome="committed"}'
        wait_for(lambda: scrape(port).get(committed) == 2, 30, "two committed promotions")
        values = scrape(port)
        assert values['edged_serving_version{model="m",version="3"}'] == 1
        assert values[committed] == 2
        assert values["edged_swap_wait_seconds_count"] == 0  # no request waited for a swap
        assert values['edged_requests_total{code="ok",model="m",version="2"}'] > 0
        assert values['edged_requests_total{code="ok",model="m",version="3"}'] > 0
        assert any(k.startswith("edged_version_figure{") and "gate_p99_ms" in k for k in values)
        assert values['edged_version_state{model="m",state="committed",version="3"}'] == 1
    finally:
        load.stop.set()
        load.join(30)
        daemon.stop()
    assert load.errors == []
