from __future__ import annotations

import re
from pathlib import Path

import pytest

from edged import settings as config
from edged.errors import ConfigError
from tests import ROOT


@pytest.mark.parametrize("name", ["edged.toml", "demo.toml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = config.load(ROOT / "configs" / name)
    assert cfg.server.unix_socket
    assert cfg.memory.budget.resolve(total_memory=2**30) > 0


def test_the_shipped_config_documents_every_key() -> None:
    """configs/edged.toml is the reference: every section and key of every section appears in
    it (set or commented out), so a new setting cannot be added without documenting it."""
    text = (ROOT / "configs" / "edged.toml").read_text()
    missing = []
    for section, field in config.Settings.model_fields.items():
        keys = getattr(field.annotation, "model_fields", None)
        if keys is None:  # [models.<name>] tables and the file's own path
            continue
        if not re.search(rf"^\[{section}\]", text, re.M):
            missing.append(f"[{section}]")
        missing += [
            f"{section}.{key}" for key in keys if not re.search(rf"^#?\s*{key}\s*=", text, re.M)
        ]
    assert missing == []


def test_demo_config_keeps_everything_under_var() -> None:
    cfg = config.load(ROOT / "configs" / "demo.toml")
    assert cfg.store.path == ROOT / "var" / "store"
    assert cfg.server.unix_socket.startswith(str(ROOT / "var"))


def test_defaults_are_loopback_only() -> None:
    cfg = config.from_dict({})
    assert cfg.server.tcp.startswith("127.0.0.1:")
    assert cfg.metrics.address.startswith("127.0.0.1:")


@pytest.mark.parametrize(
    ("text", "total", "expected"),
    [("70%", 1000, 700), ("512MB", 0, 512_000_000), ("2GiB", 0, 2 * 2**30), (1024, 0, 1024)],
)
def test_budget_forms(text: str | int, total: int, expected: int) -> None:
    assert config.MemoryBudget.parse(text).resolve(total) == expected


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"server": {"tpc": "127.0.0.1:1"}}, "server.tpc"),
        ({"stor": {"path": "/x"}}, "stor"),
        ({"server": {"tcp": "localhost"}}, "server.tcp"),
        ({"server": {"tcp": 8001}}, "server.tcp"),
        ({"memory": {"budget": "lots"}}, "memory.budget"),
        ({"memory": {"budget": "150%"}}, "memory.budget"),
        ({"memory": {"budget": -5}}, "memory.budget"),
        ({"server": {"max_message_bytes": "0MB"}}, "server.max_message_bytes"),
        ({"validation": {"timeout_seconds": 0}}, "validation.timeout_seconds"),
        ({"server": {"workers": True}}, "server.workers"),
        ({"server": {"unix_socket": "", "tcp": ""}}, "server"),
        ({"metrics": "yes"}, "metrics"),
        ({"updates": {"trusted_keys": [1]}}, "updates.trusted_keys"),
        ({"updates": {"bandwidth": "fast"}}, "updates.bandwidth"),
        ({"updates": {"partial_retention_hours": 0}}, "updates.partial_retention_hours"),
        ({"updates": {"trusted_key": "x"}}, "updates.trusted_key"),
        ({"server": {"tls_cert": "/nonexistent.pem", "tls_key": "/x"}}, "server.tls_cert"),
        # Issue 17: every bad value named, none taken for something else.
        ({"lifecycle": {"shadow_agreement": float("nan")}}, "lifecycle.shadow_agreement"),
        ({"memory": {"tick_seconds": float("nan")}}, "memory.tick_seconds"),
        ({"server": {"drain_seconds": float("inf")}}, "server.drain_seconds"),
        ({"store": {"path": ""}}, "store.path"),
        ({"server": {"max_message_bytes": "8GiB"}}, "server.max_message_bytes"),
        ({"metrics": {"address": "127.0.0.1:8001"}}, "metrics.address"),
        ({"metrics": {"address": "0.0.0.0:8001"}}, "metrics.address"),
        ({"server": {"tcp_roles": ["inference", "update"]}}, "tcp_roles"),
        ({"server": {"socket_roles": ["root"]}}, "server.socket_roles"),
        ({"server": {"tcp": "0.0.0.0:8001"}}, "tcp"),
        ({"server": {"client_roles": {"ctl": ["update"]}}}, "client_roles"),
    ],
)
def test_bad_config_names_the_key(data: dict, key: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as err:
        config.from_dict(data)
    assert key in str(err.value)


def test_a_store_path_that_is_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError) as err:
        config.from_dict({"store": {"path": str(tmp_path / "afile")}})
    assert "store.path" in err.value.message and "is a file" in err.value.message


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "missing.toml")


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "e.toml"
    path.write_text('[store]\npath = "../state"\n[server]\nunix_socket = "s.sock"\n')
    cfg = config.load(path)
    assert cfg.store.path == tmp_path / "state"
    assert cfg.server.unix_socket == str(tmp_path / "conf" / "s.sock")


def test_residency_keys_and_pins() -> None:
    cfg = config.from_dict(
        {
            "memory": {"reserve": "32MiB", "psi_threshold": 20, "load_timeout_seconds": 5},
            "residency": {"horizon_seconds": 60, "quality_weight": 3.5},
            "models": {"ocr-rec": {"pin": True}, "mlp": {"pin": False}},
        }
    )
    assert cfg.memory.reserve == 32 * 2**20
    assert cfg.memory.psi_threshold == 20.0
    assert cfg.residency.horizon_seconds == 60.0
    assert cfg.residency.quality_weight == 3.5
    assert cfg.pinned() == frozenset({"ocr-rec"})


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"models": {"Bad Name": {"pin": True}}}, "models.Bad Name"),
        ({"models": {"mlp": {"pin": "yes"}}}, "models.mlp.pin"),
        ({"models": {"mlp": {"pinned": True}}}, "models.mlp.pinned"),
        ({"residency": {"horizon_seconds": -1}}, "residency.horizon_seconds"),
        ({"residency": {"horizon": 1}}, "residency.horizon"),
        ({"memory": {"reserve": "lots"}}, "memory.reserve"),
    ],
)
def test_bad_residency_config_names_the_key(data: dict, key: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as err:
        config.from_dict(data)
    assert key in str(err.value)


def test_preload_keys() -> None:
    c = config.from_dict(
        {"preload": {"enabled": False, "lead_seconds": 10, "min_probability": 0.5}}
    )
    assert c.preload.enabled is False
    assert c.preload.lead_seconds == 10.0
    assert c.preload.min_probability == 0.5
    assert config.from_dict({}).preload.enabled is True


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"preload": {"enabled": "yes"}}, "preload.enabled"),
        ({"preload": {"min_probability": 1.5}}, "preload.min_probability"),
        ({"preload": {"interval_seconds": 0}}, "preload.interval_seconds"),
        ({"preload": {"history_max_rows": 1.5}}, "preload.history_max_rows"),
        ({"preload": {"horizon": 3}}, "preload.horizon"),
    ],
)
def test_bad_preload_config_names_the_key(data: dict, key: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config.from_dict(data)


def test_updates_section_resolves_paths_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "edged.toml").write_text(
        '[updates]\ntrusted_keys = ["keys.d", "/etc/edged/ops.pub"]\nbandwidth = "2MB"\n'
    )
    cfg = config.load(tmp_path / "edged.toml")
    assert cfg.updates.trusted_keys == (tmp_path / "keys.d", Path("/etc/edged/ops.pub"))
    assert cfg.updates.bandwidth == 2_000_000
    assert config.from_dict({}).updates.bandwidth == 0  # no cap by default


def test_tls_needs_both_halves_and_a_tcp_listener(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("y")
    ok = config.from_dict({"server": {"tls_cert": str(cert), "tls_key": str(key)}})
    assert ok.server.tls_cert == cert and ok.server.tls_client_ca is None
    with pytest.raises(ConfigError, match="set both"):
        config.from_dict({"server": {"tls_cert": str(cert)}})
    with pytest.raises(ConfigError, match=r"server\.tcp is empty"):
        config.from_dict({"server": {"tls_cert": str(cert), "tls_key": str(key), "tcp": ""}})
