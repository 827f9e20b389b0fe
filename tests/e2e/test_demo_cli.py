"""`edged demo`, as `make run` calls it: building the demo again keeps what the store has."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_edged_demo_twice_keeps_the_imported_versions(tmp_path: Path) -> None:
    config = tmp_path / "demo.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path / "store"}"\n'
        f'[server]\nunix_socket = "{tmp_path / "edged.sock"}"\ntcp = ""\n'
        '[metrics]\naddress = ""\n'
    )

    def demo() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edged", "demo", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    first = demo()
    assert first.returncode == 0, first.stderr[-2000:]
    manifests = sorted((tmp_path / "store").rglob("*.json"))
    before = {p: p.read_bytes() for p in manifests}
    second = demo()
    assert second.returncode == 0, second.stderr[-2000:]
    for name in ("mlp", "cnn", "tinyllama"):
        assert f"demo model {name} version 1 is already in the store; kept" in second.stdout
    assert {p: p.read_bytes() for p in manifests} == before
