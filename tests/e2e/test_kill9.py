"""kill -9 at random instants of `edged import` and of a SIGHUP re-read (issue 17's campaign; push,
apply and promotion have their 20 trials each in test_updates.py and test_promotion.py). After
each, the store holds whole versions only and a committed version serves."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edged.store.store import ModelStore
from tests.daemon import DaemonProcess
from tests.portfolios import mlp_family, store_problems

pytestmark = pytest.mark.e2e
MODEL = "killed"


def test_kill_9_at_random_instants_of_import(tmp_path: Path) -> None:
    """Ten imports of a ~20 MB version, each killed at a random instant: a version is in the
    store whole or not at all, and the next import finishes it."""
    src = mlp_family(tmp_path / "src", MODEL, (256, 2048, 2048, 10), seed=2)
    root = tmp_path / "store"
    config = tmp_path / "edged.toml"
    config.write_text(f'[store]\npath = "{root}"\n')
    rng = random.Random(11)
    argv = [sys.executable, "-m", "edged", "import", "--no-validate", str(src), "--config"]
    for _ in range(10):
        proc = subprocess.Popen([*argv, str(config)], stdout=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 1.4))  # start-up takes ~0.6 s, the copy ~1 s
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert store_problems(root) == []
        versions = ModelStore(root).versions(MODEL)
        assert versions in ([], ["1"]), versions
    done = subprocess.run([*argv, str(config)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert ModelStore(root).versions(MODEL) == ["1"]
    assert store_problems(root) == []


def test_kill_9_at_random_instants_of_a_reload(tmp_path: Path) -> None:
    """Ten times: a new version imported, SIGHUP (the daemon re-reads the store and starts its
    promotion), kill -9 at a random instant of that; after a restart a committed version
    serves and the store holds whole versions."""
    store = ModelStore(tmp_path / "store")
    store.import_dir(mlp_family(tmp_path / "src", MODEL, (64, 256, 10), seed=1))
    daemon = DaemonProcess(store.root, preload__enabled=False).start()
    rng = random.Random(5)
    try:
        for trial in range(10):
            version = str(trial + 2)
            directory = mlp_family(
                tmp_path / f"src{version}", MODEL, (64, 256, 10), seed=trial, version=version
            )
            store.import_dir(directory, activate=True)
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGHUP)
            time.sleep(rng.uniform(0.0, 3.0))
            daemon.kill()
            daemon.start()
            committed = store.active(MODEL)
            assert committed in store.versions(MODEL)
            assert _served(daemon) in store.versions(MODEL)
            assert store_problems(store.root, recover=False) == []
    finally:
        daemon.stop()


def _served(daemon: DaemonProcess) -> str:
    import numpy as np
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(url=daemon.unix_url)
    try:
        data = triton.InferInput("input", [1, 64], "FP32")
        data.set_data_from_numpy(np.ones((1, 64), np.float32))
        return str(client.infer(MODEL, [data], client_timeout=60).get_response().model_version)
    finally:
        client.close()
