"""Pushed updates against the real daemon: signed patches over gRPC, resume, refusal, kill -9.

The model is a 19 MB fp32 MLP with an int8 variant; a new version fine-tunes the fp32 weights
(sent as a patch) and keeps the int8 file (reused, nothing sent).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from edged.api import updates_pb2 as upb
from edged.api import updates_pb2_grpc as upb_grpc
from edged.errors import EdgedError
from edged.store.store import ModelStore
from edged.update import signing
from edged.update.controller import client
from edged.update.protocol import update_id
from edged.update.synthetic import finetune
from tests.certs import make_pki
from tests.daemon import DaemonProcess, free_port, scrape, wait_for
from tests.portfolios import mlp_family, store_problems

pytestmark = pytest.mark.e2e
MODEL = "ranker"


def new_version(v1: Path, out: Path, version: str, seed: int) -> Path:
    """``v1`` with its fp32 weights fine-tuned (every weight ~0.1%)."""
    directory = out / f"{MODEL}-v{version}"
    shutil.copytree(v1, directory)
    raw = json.loads((directory / "manifest.json").read_text())
    raw["version"] = version
    for variant in raw["variants"]:
        if variant["id"] == "fp32":
            path = directory / variant["file"]
            finetune(v1 / variant["file"], path, fraction=1.0, relative=1e-3, seed=seed)
            variant["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(raw))
    return directory


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("updates")
    v1 = mlp_family(root / "src", MODEL, (256, 2048, 2048, 10), seed=5)
    keys = root / "trusted"
    keys.mkdir()
    signing.keygen(root / "controller.key")
    shutil.copy(root / "controller.key.pub", keys / "controller.pub")
    signing.keygen(root / "stranger.key")
    v2 = new_version(v1, root / "src", "2", seed=1)
    update = root / "update-v2"
    client.build(v1, v2, update, root / "controller.key", activate="immediate")
    return {"root": root, "v1": v1, "v2": v2, "update": update, "keys": keys}


def fresh_store(world: dict[str, Any], tmp_path: Path) -> Path:
    store = ModelStore(tmp_path / "store")
    store.import_dir(world["v1"])
    return store.root


def start(store: Path, world: dict[str, Any], **overrides: Any) -> DaemonProcess:
    return DaemonProcess(
        store, updates__trusted_keys=str(world["keys"]), preload__enabled=False, **overrides
    ).start()


def served_version(address: str) -> str:
    """The version that answers an inference request (tritonclient, as a real client would;
    it also owns the `inference` protobuf package in this process)."""
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(url=address)
    try:
        data = triton.InferInput("input", [1, 256], "FP32")
        data.set_data_from_numpy(np.ones((1, 256), np.float32))
        return str(client.infer(MODEL, [data], client_timeout=60).get_response().model_version)
    finally:
        client.close()


def store_is_consistent(root: Path) -> None:
    """Every registered version's blobs exist with the right digest; ACTIVE names one of them."""
    assert store_problems(root, recover=False) == []
    store = ModelStore(root)
    assert store.active(MODEL) in store.versions(MODEL)


def push(address: str, update: Path, **options: Any) -> Any:
    manifest = update / "manifest.json"
    with grpc.insecure_channel(address) as channel:
        return client.push(channel, manifest, client.files_to_push(manifest), **options)


def test_push_patch_activates_and_serves_the_new_version(
    world: dict[str, Any], tmp_path: Path
) -> None:
    metrics_port = free_port()
    daemon = start(
        fresh_store(world, tmp_path), world, metrics__address=f"127.0.0.1:{metrics_port}"
    )
    try:
        assert served_version(daemon.unix_url) == "1"
        manifest = json.loads((world["update"] / "manifest.json").read_text())
        transfers = manifest["update"]["variants"]
        assert transfers["fp32"]["method"] == "patch" and transfers["int8"]["method"] == "reuse"
        fp32_size = next(v["size"] for v in manifest["variants"] if v["id"] == "fp32")
        assert transfers["fp32"]["size"] < 0.7 * fp32_size
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "edged",
                "push",
                "--node",
                daemon.admin_url,
                "--manifest",
                str(world["update"] / "manifest.json"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert cli.returncode == 0, cli.stderr
        # Applied, and its promotion started: the committed version serves until it passes.
        assert f"{MODEL} version 2: candidate" in cli.stdout
        wait_for(lambda: ModelStore(daemon.store).active(MODEL) == "2", 120, "the promotion")
        assert served_version(daemon.unix_url) == "2"
        values = scrape(metrics_port)
        assert values["edged_update_bytes_received_total"] == transfers["fp32"]["size"]
        assert values["edged_patch_apply_seconds_count"] == 1
        assert values["edged_updates_in_flight"] == 0
        # Pushing the same version again is a no-op that reports where it stands.
        again = push(daemon.admin_url, world["update"])
        assert again.state == "active"
    finally:
        daemon.stop()
    store_is_consistent(daemon.store)
    blob = ModelStore(daemon.store).blob_path(
        next(v["sha256"] for v in manifest["variants"] if v["id"] == "fp32")
    )
    assert blob.read_bytes() == (world["v2"] / "model.fp32.onnx").read_bytes()


def refused(address: str, update: Path, manifest: bytes, signature: bytes) -> grpc.RpcError:
    files = client.files_to_push(update / "manifest.json")
    with grpc.insecure_channel(address) as channel:
        stub = upb_grpc.UpdatesStub(channel)

        def requests() -> Iterator[upb.PushRequest]:
            yield upb.PushRequest(header=upb.PushHeader(manifest=manifest, signature=signature))
            yield from client.chunks_of(files, {}, None)

        with pytest.raises(grpc.RpcError) as err:
            stub.Push(requests(), timeout=60)
    return err.value


def test_bad_pushes_are_refused_and_nothing_is_written(
    world: dict[str, Any], tmp_path: Path
) -> None:
    metrics_port = free_port()
    store = fresh_store(world, tmp_path)
    daemon = start(store, world, metrics__address=f"127.0.0.1:{metrics_port}")
    update = world["update"]
    manifest = (update / "manifest.json").read_bytes()
    good_sig = (update / "manifest.json.sig").read_bytes()
    stranger_sig = signing.sign(manifest, signing.load_private(world["root"] / "stranger.key"))
    tampered = manifest.replace(b'"immediate"', b'"manual"   ')
    blobs_before = sorted(p.name for p in (store / "blobs" / "sha256").iterdir())
    try:
        cases = [
            (b"", "not signed", grpc.StatusCode.UNAUTHENTICATED),
            (stranger_sig, "not in updates.trusted_keys", grpc.StatusCode.UNAUTHENTICATED),
            (b"{not json", "malformed", grpc.StatusCode.UNAUTHENTICATED),
        ]
        for signature, message, code in cases:
            err = refused(daemon.admin_url, update, manifest, signature)
            assert err.code() == code and message in (err.details() or ""), err.details()
        err = refused(daemon.admin_url, update, tampered, good_sig)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "does not match" in (err.details() or "")

        # A patch altered in transit: the signed digest catches it after the last byte.
        corrupt = tmp_path / "corrupt"
        shutil.copytree(update, corrupt)
        patch_file = corrupt / "fp32.patch"
        data = bytearray(patch_file.read_bytes())
        data[len(data) // 2] ^= 0x10
        patch_file.write_bytes(bytes(data))
        err = refused(daemon.admin_url, corrupt, manifest, good_sig)
        assert err.code() == grpc.StatusCode.DATA_LOSS
        assert "signed manifest says" in (err.details() or "")

        values = scrape(metrics_port)
        for reason, count in (("unsigned", 1), ("untrusted_key", 1), ("bad_signature", 2)):
            assert values[f'edged_patches_rejected_total{{reason="{reason}"}}'] == count
        assert values['edged_patches_rejected_total{reason="digest_mismatch"}'] == 1
        assert served_version(daemon.unix_url) == "1"
    finally:
        daemon.stop()
    assert ModelStore(store).versions(MODEL) == ["1"]
    assert sorted(p.name for p in (store / "blobs" / "sha256").iterdir()) == blobs_before
    store_is_consistent(store)


def received_bytes(metrics_port: int) -> float:
    return scrape(metrics_port).get("edged_update_bytes_received_total", 0.0)


def test_a_dropped_push_resumes_where_it_stopped(world: dict[str, Any], tmp_path: Path) -> None:
    metrics_port = free_port()
    daemon = start(
        fresh_store(world, tmp_path), world, metrics__address=f"127.0.0.1:{metrics_port}"
    )
    update = world["update"]
    manifest = (update / "manifest.json").read_bytes()
    files = client.files_to_push(update / "manifest.json")
    total = files[0].transfer.size
    uid = update_id(manifest)
    try:
        with grpc.insecure_channel(daemon.admin_url) as channel:
            stub = upb_grpc.UpdatesStub(channel)
            sent = threading.Event()
            before_drop = [0]  # bytes sent before the link drops

            def half() -> Iterator[upb.PushRequest]:
                header = upb.PushHeader(
                    manifest=manifest, signature=(update / "manifest.json.sig").read_bytes()
                )
                yield upb.PushRequest(header=header)
                for chunk in client.chunks_of(files, {}, None):
                    if before_drop[0] >= total // 2:
                        sent.set()
                        time.sleep(30)  # the link "drops": the call is cancelled meanwhile
                    before_drop[0] += len(chunk.chunk.data)
                    yield chunk

            def status_held() -> int:
                status = stub.Status(upb.UpdateStatusRequest(update_id=uid), timeout=10)
                assert status.state == "receiving"
                return int({f.variant: f.held for f in status.files}["fp32"])

            call = stub.Push.future(half(), timeout=60)
            assert sent.wait(30)
            wait_for(
                lambda: received_bytes(metrics_port) == before_drop[0],
                what="the node to receive every byte sent before the drop",
            )
            call.cancel()
            # The node notices the drop on its own time, then makes what it received durable;
            # Status counts only durable (fsynced) bytes.
            wait_for(lambda: status_held() == before_drop[0], what="Status to count them held")
        held = before_drop[0]
        assert total // 4 <= held < total
        # The dropped Push gave its model back: nothing is left in flight to refuse the next one.
        assert scrape(metrics_port)["edged_updates_in_flight"] == 0
        # The daemon restarts in between: what it held survives.
        daemon.stop()
        daemon.start()
        with grpc.insecure_channel(daemon.admin_url) as channel:
            stub = upb_grpc.UpdatesStub(channel)
            assert status_held() == held
        result = push(daemon.admin_url, update)
        assert result.state == "candidate"
        wait_for(lambda: served_version(daemon.unix_url) == "2", 120, "the promotion")
        assert received_bytes(metrics_port) == total - held, "the second push re-sent held bytes"
    finally:
        daemon.stop()
    store_is_consistent(daemon.store)


def test_kill_9_during_push_and_apply_keeps_the_store_consistent(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """20 trials: kill -9 at a random instant of a push (receiving, applying, registering);
    after a restart the store is consistent, a version serves, and a retried push completes."""
    store = fresh_store(world, tmp_path)
    rng = random.Random(1234)
    daemon = start(store, world, updates__bandwidth="24MB")
    versions: list[str] = []
    outcomes: list[str] = []
    try:
        for trial in range(20):
            version = str(trial + 2)
            directory = new_version(world["v1"], tmp_path / "src", version, seed=100 + trial)
            update = tmp_path / f"update-{version}"
            client.build(
                world["v1"],
                directory,
                update,
                world["root"] / "controller.key",
                activate="immediate" if trial % 2 else "manual",
            )

            def run(update: Path = update) -> None:
                # The kill interrupts the push: any outcome is fine here.
                with contextlib.suppress(grpc.RpcError, EdgedError):
                    push(daemon.admin_url, update, retries=0)

            thread = threading.Thread(target=run)
            thread.start()
            time.sleep(rng.uniform(0.0, 0.9))
            daemon.kill()
            thread.join(30)
            daemon.start()
            # A committed version serves (promotions of earlier trials may be interrupted too:
            # they start again, the committed one serving meanwhile).
            committed = ModelStore(store).active(MODEL)
            assert committed is not None
            assert ModelStore(store).record(MODEL, committed).state == "committed"
            assert not any((store / "tmp").iterdir()), "staging leftovers after recovery"
            store_is_consistent(store)
            assert served_version(daemon.unix_url) == committed
            outcomes.append(interrupted_at(daemon.admin_url, update, store, version))
            result = push(daemon.admin_url, update)
            assert result.version == version
            assert result.state in ("active", "staged", "candidate", "probation", "rejected")
            versions.append(version)
    finally:
        daemon.stop()
    store_is_consistent(store)
    assert set(versions) <= set(ModelStore(store).versions(MODEL))
    assert len(versions) == 20
    # The kills landed in different phases (receiving is the longest).
    assert outcomes.count("receiving") >= 3, outcomes
    assert len(set(outcomes)) >= 2, outcomes
    print("kill outcomes:", {o: outcomes.count(o) for o in set(outcomes)})


def interrupted_at(address: str, update: Path, store: Path, version: str) -> str:
    """Which phase the kill interrupted, judged from what survived it."""
    if version in ModelStore(store).versions(MODEL):
        return "done"
    uid = update_id((update / "manifest.json").read_bytes())
    with grpc.insecure_channel(address) as channel:
        status = upb_grpc.UpdatesStub(channel).Status(
            upb.UpdateStatusRequest(update_id=uid), timeout=10
        )
    if status.state == "unknown":
        return "before"
    if all(f.held == f.size for f in status.files):
        return "applying"
    return "receiving"


def test_tls_and_mutual_tls_on_the_tcp_listener(world: dict[str, Any], tmp_path: Path) -> None:
    """Pushing over TCP takes a client certificate the node grants the update role: without
    TLS the handshake fails, with TLS but no certificate too, with a certificate the CA signed
    but that is not granted the role PERMISSION_DENIED names the role, with the granted one the
    update goes through."""
    pki = make_pki(tmp_path / "pki", clients=("client", "other"))
    daemon = start(
        fresh_store(world, tmp_path),
        world,
        server__tls_cert=str(pki["server"]),
        server__tls_key=str(pki["server_key"]),
        server__tls_client_ca=str(pki["ca"]),
        server__client_roles={"edged-test-client": ["update"]},
    )
    manifest = world["update"] / "manifest.json"
    files = client.files_to_push(manifest)
    address = f"localhost:{daemon.tcp_port}"

    def mutual(name: str) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            pki["ca"].read_bytes(), pki[f"{name}_key"].read_bytes(), pki[name].read_bytes()
        )

    try:
        # No TLS at all, and TLS without a client certificate: the handshake fails.
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as err:
            client.push(channel, manifest, files, retries=0)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        anonymous = grpc.ssl_channel_credentials(pki["ca"].read_bytes())
        with grpc.secure_channel(address, anonymous) as channel, pytest.raises(grpc.RpcError):
            client.push(channel, manifest, files, retries=0)
        with (
            grpc.secure_channel(address, mutual("other")) as channel,
            pytest.raises(grpc.RpcError) as denied,
        ):
            client.push(channel, manifest, files, retries=0)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'update' role" in (denied.value.details() or "")
        with grpc.secure_channel(address, mutual("client")) as channel:
            result = client.push(channel, manifest, files, retries=0)
        assert result.state == "candidate"
        # On-device clients keep the unix socket, without TLS.
        wait_for(lambda: served_version(daemon.unix_url) == "2", 120, "the promotion")
    finally:
        daemon.stop()


@contextlib.contextmanager
def small_disk(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes: a disk that fills up."""
    path.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("needs root to mount a small tmpfs (a disk that fills up); CI runs as root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _store_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("phase", ["receiving", "applying"])
def test_a_full_disk_refuses_import_push_and_apply_cleanly(
    world: dict[str, Any], tmp_path: Path, phase: str
) -> None:
    """On a disk with room for version 1 and (apply) the patch but not version 2's files, or
    (receive) not even the patch: `edged import` of version 2 and a push of the patch each end
    with an error saying the disk is full, no temporary file is left, and version 1 serves on.
    A patch refused while it arrives is discarded (it cannot be kept); one received whole and
    refused while it is applied is kept, so that the push resumes at applying once there is
    room."""
    v1_bytes = _store_bytes(world["v1"])
    patch_bytes = _store_bytes(world["update"])
    room = patch_bytes + 3 * 2**20 if phase == "applying" else patch_bytes // 3
    with small_disk(tmp_path / "disk", v1_bytes + room) as disk:
        store = ModelStore(disk / "store")
        store.import_dir(world["v1"])
        with pytest.raises(EdgedError) as err:
            store.import_dir(world["v2"])
        assert "no space left" in err.value.message and err.value.code.value == "resource_exhausted"
        assert list(store.tmp.iterdir()) == []
        assert store.versions(MODEL) == ["1"]

        daemon = start(store.root, world)
        try:
            with pytest.raises(grpc.RpcError) as pushed:
                push(daemon.admin_url, world["update"], retries=0)
            assert pushed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = pushed.value.details() or ""
            assert "no space left" in details and phase in details, details
            assert list(store.tmp.iterdir()) == []
            parts = list((store.root / "updates").rglob("*.part"))
            if phase == "receiving":
                assert parts == []
            else:
                assert parts and sum(p.stat().st_size for p in parts) <= patch_bytes
            assert served_version(daemon.unix_url) == "1"
            store_is_consistent(store.root)
        finally:
            daemon.stop()


def test_a_blob_damaged_on_disk_is_never_served(world: dict[str, Any], tmp_path: Path) -> None:
    """Bit rot in the fp32 variant's blob: `edged store check` names it; the daemon finds it
    before loading it, marks it, and serves the model from its int8 variant."""
    root = fresh_store(world, tmp_path)
    store = ModelStore(root)
    manifest = store.manifest(MODEL, "1")
    fp32 = next(v for v in manifest.variants if v.quantization == "fp32")
    blob = store.variant_path(fp32)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x40  # one bit, in the middle of the weights
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    config = tmp_path / "check.toml"
    config.write_text(f'[store]\npath = "{root}"\n')
    checked = subprocess.run(
        [sys.executable, "-m", "edged", "store", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "no longer matches its digest" in checked.stdout and fp32.id in checked.stdout
    daemon = DaemonProcess(root, updates__trusted_keys=str(world["keys"]), memory__budget="4GiB")
    daemon.start()
    try:
        import tritonclient.grpc as triton

        client_ = triton.InferenceServerClient(url=daemon.unix_url)
        data_in = triton.InferInput("input", [1, 256], "FP32")
        data_in.set_data_from_numpy(np.ones((1, 256), np.float32))
        response = client_.infer(MODEL, [data_in], client_timeout=60).get_response()
        client_.close()
        assert response.parameters["edged_variant"].string_param != fp32.id
        listed = daemon.edged("models")
        assert "corrupted on disk" in listed.stdout, listed.stdout
    finally:
        daemon.stop()


def test_a_replayed_old_update_is_refused_and_stored_nowhere(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 17's first finding: a node updated 1 -> 3 directly was given the old, validly
    signed 1 -> 2 update and served version 2. Now the signed sequence of the 1 -> 3 update is
    the model's floor: the replay is refused with the reason, nothing of it is kept, version 3
    serves on. An expired update and one meant for another device are refused alike."""
    v3 = new_version(world["v1"], tmp_path / "src", "3", seed=3)
    to_v3 = tmp_path / "update-v3"
    client.build(world["v1"], v3, to_v3, world["root"] / "controller.key", activate="immediate")
    expired = tmp_path / "update-expired"
    v4 = new_version(world["v1"], tmp_path / "src", "4", seed=4)
    client.build(
        world["v1"],
        v4,
        expired,
        world["root"] / "controller.key",
        freshness=client.Freshness(valid_seconds=-60),
    )
    elsewhere = tmp_path / "update-elsewhere"
    client.build(
        world["v1"],
        v4,
        elsewhere,
        world["root"] / "controller.key",
        freshness=client.Freshness(devices=("another-device",)),
    )
    store = fresh_store(world, tmp_path)
    daemon = start(store, world)
    try:
        assert push(daemon.admin_url, to_v3).state == "candidate"
        wait_for(lambda: served_version(daemon.unix_url) == "3", 120, "version 3 promoted")
        for update, reason in (
            (world["update"], "replayed or rolled-back"),
            (expired, "expired"),
            (elsewhere, "meant for devices ['another-device']"),
        ):
            with pytest.raises(grpc.RpcError) as err:
                push(daemon.admin_url, update, retries=0)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert reason in (err.value.details() or ""), err.value.details()
        assert list((store / "updates").iterdir()) == []
        assert served_version(daemon.unix_url) == "3"
    finally:
        daemon.stop()
    assert ModelStore(store).versions(MODEL) == ["1", "3"]


def test_the_root_rotates_the_update_keys(world: dict[str, Any], tmp_path: Path) -> None:
    """A node provisioned with a root (root key r1) that names the controller's key. The
    controller moves to a new update key: an update signed by it is refused until the push
    carries root version 2 (signed by r1, naming the new key); then it is applied, and the old
    key's updates are refused from then on."""
    from edged.update import root

    for name in ("r1", "ops2"):
        signing.keygen(tmp_path / f"{name}.key")

    def pub(name: str) -> Any:
        return signing.load_public(tmp_path / f"{name}.key.pub")

    controller = signing.load_public(world["root"] / "controller.key.pub")
    v1 = root.new(1, "2040-01-01T00:00:00Z", [pub("r1")], 1, [controller])
    (tmp_path / "root.json").write_bytes(root.sign(v1, signing.load_private(tmp_path / "r1.key")))
    v2 = root.new(2, "2040-01-01T00:00:00Z", [pub("r1")], 1, [pub("ops2")])
    rotation = root.sign(v2, signing.load_private(tmp_path / "r1.key"))

    v3 = new_version(world["v1"], tmp_path / "src", "3", seed=3)
    by_new_key = tmp_path / "update-v3"
    client.build(world["v1"], v3, by_new_key, tmp_path / "ops2.key", activate="immediate")
    v4 = new_version(world["v1"], tmp_path / "src", "4", seed=4)
    by_old_key = tmp_path / "update-v4"
    client.build(world["v1"], v4, by_old_key, world["root"] / "controller.key")

    store = fresh_store(world, tmp_path)
    daemon = DaemonProcess(store, updates__root=str(tmp_path / "root.json"), preload__enabled=False)
    daemon.start()
    try:
        with pytest.raises(grpc.RpcError) as err:
            push(daemon.admin_url, by_new_key, retries=0)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert push(daemon.admin_url, by_new_key, roots=[rotation]).state == "candidate"
        wait_for(lambda: served_version(daemon.unix_url) == "3", 120, "version 3 promoted")
        with pytest.raises(grpc.RpcError) as err:
            push(daemon.admin_url, by_old_key, retries=0)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert json.loads((store / "state" / "root.json").read_text())["signed"]["version"] == 2
    finally:
        daemon.stop()
