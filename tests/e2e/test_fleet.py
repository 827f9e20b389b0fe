"""A fleet on real parts: the CNCF distribution registry, mosquitto, real edged daemons as nodes,
the `edged fleet` CLI as the controller, and tritonclient as the applications on the nodes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from onnx import load, numpy_helper, save

from edged.fleet import state as st
from edged.fleet.rollout import parse_waves, plan_waves
from edged.store.store import ModelStore
from edged.update import signing
from edged.update.synthetic import finetune
from tests.daemon import DaemonProcess, wait_for
from tests.e2e.test_promotion import Load
from tests.fleet_servers import Broker, Registry, need_servers, private_ca
from tests.versions import version_dir

MODEL = "m"


class Fleet:
    """The broker's retained view of the fleet, as a test reads it (paho, its own thread)."""

    def __init__(self, broker: Broker) -> None:
        self.reports: dict[str, dict[str, Any]] = {}
        self.online: dict[str, str] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{time.time()}")
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe([(st.REPORTED_ALL, 1), (st.ONLINE_ALL, 1)])
        self.client.loop_start()

    def _message(self, _client: Any, _userdata: Any, message: Any) -> None:
        device = message.topic.rsplit("/", 1)[-1]
        with self.lock:
            if "/reported/" in message.topic and message.payload:
                self.reports[device] = json.loads(message.payload)
            elif "/online/" in message.topic:
                self.online[device] = message.payload.decode()

    def model(self, device: str) -> dict[str, Any]:
        with self.lock:
            return dict(self.reports.get(device, {}).get("models", {}).get(MODEL, {}))

    def desire(self, topic: str, targets: dict[str, Any]) -> None:
        self.client.publish(
            topic, json.dumps({"models": targets}), qos=1, retain=True
        ).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    need_servers()
    root = tmp_path_factory.mktemp("fleet")
    registry = Registry(root / "registry").start()
    broker = Broker(root / "broker").start()
    keys = root / "trusted"
    keys.mkdir()
    signing.keygen(root / "controller.key")
    shutil.copy(root / "controller.key.pub", keys / "controller.pub")
    signing.keygen(root / "stranger.key")
    try:
        yield {"root": root, "registry": registry, "broker": broker, "keys": keys}
    finally:
        broker.stop()
        registry.stop()


def edged(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edged", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )


def publish(
    world: dict[str, Any], directory: Path, *extra: str, key: str = "controller.key"
) -> str:
    done = edged(
        "fleet", "publish", str(directory), "--registry", world["registry"].url,
        "--key", str(world["root"] / key), *extra,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def derived(base: Path, out: Path, version: str, edit: Callable[[Path, Path], None]) -> Path:
    """A copy of ``base`` as ``version``, its (one) variant file rewritten by ``edit(old,
    new)``, the manifest's digest and size fixed up."""
    directory = out / f"{MODEL}-{version}"
    shutil.copytree(base, directory)
    raw = json.loads((directory / "manifest.json").read_text())
    raw["version"] = version
    variant = raw["variants"][0]
    path = directory / variant["file"]
    edit(base / variant["file"], path)
    variant["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    variant["size"] = path.stat().st_size
    (directory / "manifest.json").write_text(json.dumps(raw))
    return directory


def fine_tuned(base: Path, out: Path, version: str, seed: int) -> Path:
    """``base`` with every weight moved ~0.1% (a new file, the same answers)."""
    return derived(
        base,
        out,
        version,
        lambda old, new: finetune(old, new, fraction=1.0, relative=1e-3, seed=seed),
    )


def renamed(directory: Path, name: str) -> Path:
    """``directory``'s version as a version of model ``name``."""
    data = json.loads((directory / "manifest.json").read_text())
    data["name"] = name
    (directory / "manifest.json").write_text(json.dumps(data))
    return directory


def flattened(base: Path, out: Path, version: str, scale: float) -> Path:
    """``base`` with its last layer scaled: the same top-1 answers, much flatter scores (its
    confidence drifts: probation takes it back where it sees traffic)."""

    def edit(old: Path, new: Path) -> None:
        model = load(str(old))
        last = {i.name: i for i in model.graph.initializer}
        for name in ("w1", "b1"):
            array = numpy_helper.to_array(last[name]) * np.float32(scale)
            last[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))
        save(model, str(new))

    return derived(base, out, version, edit)


def node(
    world: dict[str, Any], home: Path, device: str, v1: Path, **overrides: Any
) -> DaemonProcess:
    store = ModelStore(home / "store")
    store.import_dir(v1)
    settings: dict[str, Any] = {
        "preload__enabled": False,
        "updates__trusted_keys": [str(world["keys"])],
        "fleet__enabled": True,
        "fleet__device_id": device,
        "fleet__groups": ["line"],
        "fleet__broker": world["broker"].url,
        "fleet__registry": world["registry"].url,
        "fleet__jitter_seconds": 0.2,
        "fleet__retry_seconds": 1,
        "fleet__report_interval_seconds": 0.5,
    }
    return DaemonProcess(store.root, **{**settings, **overrides})


def test_waves_roll_a_patch_out_and_a_failed_probation_aborts_the_wave(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """Five real nodes at version 1. Version 2 (a fine-tune) rolls out in three waves: every node
    commits it, each having fetched the patch from 1, not the file. Version 3 (same answers,
    drifting confidence) rolls out next: the node of wave 2 that sees traffic takes it back in
    probation, the rollout aborts, and the other node of that wave goes back to version 2; the
    last wave never hears of version 3. No request to the node under traffic failed."""
    src = tmp_path / "src"
    v1 = version_dir(src, MODEL, "1")
    v2 = fine_tuned(v1, src, "2", seed=1)
    v3 = flattened(v2, src, "3", scale=0.1)
    publish(world, v1)
    out = publish(world, v2, "--channel", "stable")
    whole = json.loads((v2 / "manifest.json").read_text())["variants"][0]["size"]
    patch_bytes = int(out.split("a node at version 1 fetches ")[1].split()[0])
    assert patch_bytes < 0.75 * whole, out  # a tiny model: the patch header weighs

    devices = [f"node-{k}" for k in range(1, 6)]
    shares = "20%,60%,100%"
    waves = plan_waves(devices, parse_waves(shares))
    assert [len(w) for w in waves] == [1, 2, 2]
    watched = waves[1][0]  # the node in wave 2 that sees traffic
    daemons = {
        d: node(
            world,
            tmp_path / d,
            d,
            v1,
            # It judges version 3 on its traffic: shadow passes (same answers), probation
            # measures the drift. The others see no traffic: their windows pass on time.
            **(
                {"lifecycle__shadow_agreement": 0.95, "lifecycle__probation_seconds": 30}
                if d == watched
                else {}
            ),
        )
        for d in devices
    }
    fleet = Fleet(world["broker"])
    load: Load | None = None
    try:
        for daemon in daemons.values():
            daemon.start()
        wait_for(lambda: all(fleet.model(d).get("serving") == "1" for d in devices), 60, "reports")
        assert all(fleet.online.get(d) == "1" for d in devices)

        rollout = edged(
            "fleet", "rollout", MODEL, "2", "--broker", world["broker"].url,
            "--waves", shares, "--abort-if", "failed>0", "--wave-timeout", "120",
        )  # fmt: skip
        assert rollout.returncode == 0, rollout.stdout + rollout.stderr
        assert "rollout done: 5 committed" in rollout.stdout, rollout.stdout
        for d in devices:
            report = fleet.model(d)
            assert report["serving"] == "2" and report["versions"]["2"] == "committed", report
            assert report["method"] == "patch from 1", report
            assert 0 < report["bytes_fetched"] == patch_bytes < whole, report
        status = edged("fleet", "status", MODEL, "--broker", world["broker"].url, "--json")
        rows = {(r["version"], r["state"]): r["nodes"] for r in json.loads(status.stdout)}
        assert rows[("2", "committed (serving)")] == 5, rows
        assert [k for k in rows if k[0] == "2"] == [("2", "committed (serving)")], rows

        publish(world, v3)
        load = Load(daemons[watched].unix_url, MODEL)
        load.start()
        wait_for(lambda: len(load.answers) > 50, 30, "traffic on the watched node")
        rollout = edged(
            "fleet", "rollout", MODEL, "3", "--broker", world["broker"].url,
            "--waves", shares, "--abort-if", "failed>0", "--wave-timeout", "120",
        )  # fmt: skip
        assert rollout.returncode == 1, rollout.stdout + rollout.stderr
        assert "rollout aborted" in rollout.stdout and watched in rollout.stdout, rollout.stdout
        # The touched nodes end on version 2; the watched one took 3 back itself.
        for d in waves[0] + waves[1]:
            wait_for(lambda d=d: fleet.model(d).get("serving") == "2", 90, f"{d} back on 2")
        assert fleet.model(watched)["versions"]["3"] == "rolled_back"
        # The last wave never heard of version 3.
        for d in waves[2]:
            report = fleet.model(d)
            assert report["serving"] == "2" and "3" not in report["versions"], report
        load.stop.set()
        load.join(30)
        assert load.errors == []
        assert {v for _, v in load.answers} <= {"2", "3"}
    finally:
        if load is not None:
            load.stop.set()
        fleet.close()
        for daemon in daemons.values():
            daemon.stop()


def test_refusals_are_reported_and_nothing_is_staged(world: dict[str, Any], tmp_path: Path) -> None:
    """A manifest signed by a key the node does not trust, a blob altered in the registry's
    storage, and a channel tag moved back to an older version: each refused with the reason in
    the reported state, and no version added to the node's store."""
    src = tmp_path / "src"
    name = "r"
    base = version_dir(src, name, "1", seed=11)

    def version(v: str, seed: int) -> Path:
        return renamed(fine_tuned(base, src / v, v, seed), name)

    publish(world, base)
    untrusted, tampered, good = version("2", 2), version("3", 3), version("4", 4)
    daemon = node(world, tmp_path / "n", "refuser", base)
    fleet = Fleet(world["broker"])
    store = ModelStore(tmp_path / "n" / "store")

    def model() -> dict[str, Any]:
        with fleet.lock:
            return dict(fleet.reports.get("refuser", {}).get("models", {}).get(name, {}))

    try:
        daemon.start()
        health = daemon.edged("health")  # the DaemonSet's probe
        assert health.returncode == 0 and health.stdout.strip() == "SERVING", health
        wait_for(lambda: model().get("serving") == "1", 60, "the first report")

        publish(world, untrusted, key="stranger.key")
        fleet.desire(st.device_topic("refuser"), {name: {"version": "2"}})
        wait_for(lambda: "not in updates.trusted_keys" in model().get("error", ""), 60, "refusal")
        assert store.versions(name) == ["1"]

        publish(world, tampered)
        # The patch is what a node at 1 fetches: alter its blob in the registry's storage (a bad
        # disk, a compromised mirror). The registry serves it as it is.
        target = _patch_blob(world, name, "3")
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
        fleet.desire(st.device_topic("refuser"), {name: {"version": "3"}})
        wait_for(lambda: "hashes to" in model().get("error", ""), 60, "digest refusal")
        assert store.versions(name) == ["1"]

        publish(world, good, "--channel", "stable")
        fleet.desire(st.device_topic("refuser"), {name: {"channel": "stable"}})
        wait_for(lambda: model().get("serving") == "4", 90, "version 4 through the channel")
        done = edged("fleet", "tag", name, "1", "stable", "--registry", world["registry"].url)
        assert done.returncode == 0, done.stderr
        fleet.desire(st.device_topic("refuser"), {name: {"channel": "stable", "rollout": "again"}})
        wait_for(
            lambda: "older than the serving version 4" in model().get("error", ""), 60, "older"
        )
        assert model()["serving"] == "4"
        assert sorted(store.versions(name)) == ["1", "4"]
        daemon.stop()
        wait_for(lambda: fleet.online.get("refuser") == "0", 30, "offline after a clean stop")
        health = daemon.edged("health", "--timeout", "2")
        assert health.returncode == 1 and "not serving" in health.stdout, health
    finally:
        fleet.close()
        daemon.stop()


def test_a_pulled_artifact_carries_the_root_that_rotates_the_update_keys(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """A node provisioned with a root (root key r1) naming the controller's key. The controller
    moves to a new update key: a version it publishes signed by that key alone is refused; one
    published with root version 2 (signed by r1, naming the new key) as a layer is pulled, the
    node moves to that root, and serves the version."""
    from edged.update import root

    for name in ("r1", "ops2"):
        signing.keygen(tmp_path / f"{name}.key")
    r1 = signing.load_private(tmp_path / "r1.key")
    r1_pub = signing.load_public(tmp_path / "r1.key.pub")
    controller = signing.load_public(world["root"] / "controller.key.pub")
    first = root.new(1, "2040-01-01T00:00:00Z", [r1_pub], 1, [controller])
    (tmp_path / "root-1.json").write_bytes(root.sign(first, r1))
    ops2 = signing.load_public(tmp_path / "ops2.key.pub")
    rotation = root.new(2, "2040-01-01T00:00:00Z", [r1_pub], 1, [ops2])
    (tmp_path / "root-2.json").write_bytes(root.sign(rotation, r1))
    shutil.copy(tmp_path / "ops2.key", world["root"] / "ops2.key")

    src = tmp_path / "src"
    name = "k"
    base = version_dir(src, name, "1", seed=21)

    def version(v: str, seed: int) -> Path:
        return renamed(fine_tuned(base, src / v, v, seed), name)

    publish(world, base)
    daemon = node(
        world, tmp_path / "n", "rooted", base, updates__root=str(tmp_path / "root-1.json")
    )
    fleet = Fleet(world["broker"])
    store = ModelStore(tmp_path / "n" / "store")

    def model() -> dict[str, Any]:
        with fleet.lock:
            return dict(fleet.reports.get("rooted", {}).get("models", {}).get(name, {}))

    try:
        daemon.start()
        wait_for(lambda: model().get("serving") == "1", 60, "the first report")
        publish(world, version("2", 2), key="ops2.key")
        fleet.desire(st.device_topic("rooted"), {name: {"version": "2"}})
        wait_for(lambda: bool(model().get("error")), 60, "the new key refused without the root")
        assert store.versions(name) == ["1"]

        publish(world, version("3", 3), "--root", str(tmp_path / "root-2.json"), key="ops2.key")
        fleet.desire(st.device_topic("rooted"), {name: {"version": "3"}})
        wait_for(lambda: model().get("serving") == "3", 120, "version 3 under the new root")
        held = json.loads((store.root / "state" / "root.json").read_text())
        assert held["signed"]["version"] == 2
    finally:
        fleet.close()
        daemon.stop()


def _patch_blob(world: dict[str, Any], name: str, version: str) -> Path:
    """The registry's file holding the patch from version 1 in ``name`` ``version``'s artifact."""
    import urllib.request

    url = f"{world['registry'].url}/v2/edged/{name}/manifests/v{version}"
    request = urllib.request.Request(
        url, headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        document = json.loads(response.read())
    (patch,) = [
        layer
        for layer in document["layers"]
        if layer["mediaType"] == "application/vnd.edged.patch.v1"
        and layer["annotations"]["org.edged.base-version"] == "1"
    ]
    return world["registry"].blob_file(patch["digest"])


def test_a_download_cut_by_the_registry_resumes_where_it_stopped(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """A node that holds no base fetches whole files at 1 MB/s; the registry is killed half-way
    and started again: the node resumes with a Range request, fetches each byte once, and the
    file it stores is byte-identical."""
    from tests.portfolios import mlp_family

    src = tmp_path / "src"
    old = mlp_family(src / "old", "big", (256, 1024, 1024, 10), seed=3)
    new = mlp_family(src / "new", "big", (256, 1024, 1024, 10), seed=4)
    manifest = json.loads((new / "manifest.json").read_text())
    manifest["version"] = "2"
    (new / "manifest.json").write_text(json.dumps(manifest))
    publish(world, new, "--keep", "0")
    size = sum(v["size"] for v in manifest["variants"])
    assert size > 4_000_000
    daemon = node(
        world, tmp_path / "n", "resumer", old, fleet__bandwidth="1MB", fleet__jitter_seconds=0
    )
    fleet = Fleet(world["broker"])
    registry = world["registry"]
    try:
        daemon.start()
        wait_for(lambda: fleet.reports.get("resumer") is not None, 60, "the first report")
        fleet.desire(st.device_topic("resumer"), {"big": {"version": "2"}})

        def fetched() -> int:
            with fleet.lock:
                return int(
                    fleet.reports.get("resumer", {})
                    .get("models", {})
                    .get("big", {})
                    .get("bytes_fetched", 0)
                )

        wait_for(lambda: fetched() > size // 3, 60, "a third fetched")
        registry.stop()
        cut = fetched()
        time.sleep(2)
        registry.start()
        wait_for(
            lambda: ModelStore(tmp_path / "n" / "store").versions("big") == ["1", "2"],
            120,
            "v2 stored",
        )
        store = ModelStore(tmp_path / "n" / "store")
        for variant in manifest["variants"]:
            assert (
                store.blob_path(variant["sha256"]).read_bytes()
                == (new / variant["file"]).read_bytes()
            )
        wait_for(lambda: fetched() >= size, 30, "the final report")
        assert cut < size
        # Each byte fetched once: what arrived before the cut was kept (made durable when the
        # session ended), and the next attempt asked for the rest.
        assert fetched() == size, (fetched(), size)
    finally:
        fleet.close()
        daemon.stop()
        if registry.proc is None or registry.proc.poll() is not None:
            with contextlib.suppress(Exception):
                registry.start()


def test_registry_and_broker_over_tls_with_a_private_ca(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """A registry on HTTPS and a broker on MQTTS, both with certificates of a private CA: the
    controller (publish, status) and a node reach them with the CA configured, and a client
    without it is refused with a certificate error."""
    ca, cert, key = private_ca(tmp_path / "ca")
    registry = Registry(tmp_path / "tls-registry", tls=(cert, key)).start()
    broker = Broker(tmp_path / "tls-broker", tls=(ca, cert, key)).start()
    src = tmp_path / "src"
    v1 = version_dir(src, "t", "1", seed=21)
    v2 = fine_tuned(v1, src / "2", "2", seed=2)
    secure = {**world, "registry": registry, "broker": broker}
    daemon = node(
        secure, tmp_path / "n", "tls-node", v1,
        fleet__registry_ca_file=str(ca), fleet__broker_ca_file=str(ca),
    )  # fmt: skip
    try:
        refused = edged(
            "fleet", "publish", str(v1), "--registry", registry.url,
            "--key", str(world["root"] / "controller.key"),
        )  # fmt: skip
        assert refused.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr, refused
        publish(secure, v1, "--registry-ca", str(ca))
        publish(secure, v2, "--registry-ca", str(ca))
        daemon.start()
        status = ["fleet", "status", "--broker", broker.url, "--json", "--settle", "2"]
        wait_for(
            lambda: '"t"' in edged(*status, "--broker-ca", str(ca)).stdout, 60, "the node's report"
        )
        untrusted = edged(*status)
        assert untrusted.returncode != 0 and "certificate verify failed" in untrusted.stderr.lower()
        fleet_client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-test")
        fleet_client.tls_set(ca_certs=str(ca))
        fleet_client.connect("127.0.0.1", broker.port)
        fleet_client.publish(
            st.device_topic("tls-node"), json.dumps({"models": {"t": {"version": "2"}}}), 1, True
        ).wait_for_publish(10)
        fleet_client.disconnect()
        wait_for(lambda: ModelStore(tmp_path / "n" / "store").active("t") == "2", 90, "v2 over TLS")
    finally:
        daemon.stop()
        broker.stop()
        registry.stop()
