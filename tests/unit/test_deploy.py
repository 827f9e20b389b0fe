"""The Kubernetes manifests in deploy/: valid against the API schemas, and what they configure is
what edged accepts (docs/kubernetes.md)."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from edged import settings as settings_mod
from edged.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kubernetes" / "edged.yaml"
# The oldest release whose schemas the validator ships, and its newest: the manifest is valid
# on both (and, the API being stable, on those between).
VERSIONS = ("1.25.0", "1.37.0")


def documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def kind(name: str) -> dict[str, Any]:
    (found,) = [d for d in documents() if d["kind"] == name]
    return found


@pytest.mark.parametrize("version", VERSIONS)
def test_every_document_is_valid_against_the_api_schemas(version: str) -> None:
    docs = documents()
    assert {d["kind"] for d in docs} == {"Namespace", "ConfigMap", "DaemonSet"}
    for document in docs:
        kubernetes_validate.validate(document, version, strict=True)


def test_a_broken_manifest_is_caught_by_the_same_check() -> None:
    broken = kind("DaemonSet")
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_the_configmap_is_a_config_edged_accepts(tmp_path: Path) -> None:
    text = kind("ConfigMap")["data"]["edged.toml"]
    settings = settings_mod.from_dict(tomllib.loads(text), base_dir=tmp_path)
    assert settings.fleet.enabled and str(settings.server.unix_socket) == "/run/edged/edged.sock"
    # The container's memory limit leaves the runtimes room above what the models may hold.
    limit = kind("DaemonSet")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert settings.memory.budget.resolve() + 256 * 2**20 <= settings_mod.parse_size(
        limit["memory"].replace("Gi", "GiB")
    )


def test_probes_and_args_are_real_edged_commands() -> None:
    container = kind("DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    parser = build_parser()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[0] == "edged"
        assert parser.parse_args(command[1:]).command == "health", shlex.join(command)
    assert parser.parse_args(container["args"]).command == "serve"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/run/edged", "/var/lib/edged", "/etc/edged/edged.toml"} <= mounts


def test_the_pod_runs_unprivileged() -> None:
    spec = kind("DaemonSet")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    context = spec["containers"][0]["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"]["drop"] == ["ALL"]
