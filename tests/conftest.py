from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.demo import build_demo
from edged.store.store import ModelStore
from tests.daemon import DaemonProcess


@pytest.fixture(scope="session")
def demo_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo portfolio's model directories, built once per test session."""
    out = tmp_path_factory.mktemp("demo") / "src"
    build_demo(out)
    return out


def import_demo(root: Path, demo_src: Path) -> Path:
    """A store at ``root`` holding the demo portfolio."""
    store = ModelStore(root)
    for model_dir in sorted(demo_src.iterdir()):
        store.import_dir(model_dir)
    return root


@pytest.fixture
def demo_store(tmp_path: Path, demo_src: Path) -> Path:
    """A fresh store holding the demo portfolio."""
    return import_demo(tmp_path / "store", demo_src)


@pytest.fixture
def model_dir(tmp_path: Path, demo_src: Path) -> Path:
    """A writable copy of the demo MLP's directory, to corrupt in tests."""
    target = tmp_path / "mlp-src"
    shutil.copytree(demo_src / "mlp", target)
    return target


def read_manifest(directory: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((directory / "manifest.json").read_text())


def write_manifest(directory: Path, manifest: dict) -> None:  # type: ignore[type-arg]
    (directory / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def module_daemon(
    tmp_path_factory: pytest.TempPathFactory, demo_src: Path
) -> Iterator[DaemonProcess]:
    """One daemon on the demo portfolio shared by a module's read-mostly tests."""
    root = import_demo(tmp_path_factory.mktemp("daemon") / "store", demo_src)
    daemon = DaemonProcess(root, server__max_message_bytes="1MiB").start()
    yield daemon
    daemon.stop()
