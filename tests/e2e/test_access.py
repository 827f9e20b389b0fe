"""Roles (docs/security.md): every call that changes the device, refused for a client without
the role and allowed with it — an unprivileged local user on the unix sockets, TCP clients
with and without a granted certificate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.certs import make_pki
from tests.daemon import DaemonProcess

pytestmark = pytest.mark.e2e

# Each mutating RPC with a harmless request. A call the role check lets through may still fail
# for its own reasons (nothing to roll back, an empty push): only PERMISSION_DENIED is refusal.
CALLS = r"""
import json, sys
import grpc
from edged.api import inference_pb2 as ipb, inference_pb2_grpc as ipb_grpc
from edged.api import lifecycle_pb2 as lpb, lifecycle_pb2_grpc as lpb_grpc
from edged.api import portfolio_pb2 as ppb, portfolio_pb2_grpc as ppb_grpc
from edged.api import updates_pb2 as upb, updates_pb2_grpc as upb_grpc


def channel(target, creds):
    if creds is None:
        return grpc.insecure_channel(target)
    ca, key, cert = (open(p, "rb").read() if p else None for p in creds)
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(ca, key, cert))


def calls(ch):
    i, l = ipb_grpc.GRPCInferenceServiceStub(ch), lpb_grpc.LifecycleStub(ch)
    p, u = ppb_grpc.PortfolioStub(ch), upb_grpc.UpdatesStub(ch)
    return {
        "Pin": lambda: p.Pin(ppb.PinRequest(model="cnn"), timeout=20),
        "Unpin": lambda: p.Unpin(ppb.PinRequest(model="cnn"), timeout=20),
        "Evict": lambda: p.Evict(ppb.EvictRequest(model="cnn"), timeout=20),
        "Load": lambda: p.Load(ppb.LoadRequest(model="cnn"), timeout=60),
        "Activate": lambda: l.Activate(lpb.ActivateRequest(model="cnn", version="9"), timeout=20),
        "Rollback": lambda: l.Rollback(lpb.RollbackRequest(model="cnn", to="9"), timeout=20),
        "RepositoryModelUnload": lambda: i.RepositoryModelUnload(
            ipb.RepositoryModelUnloadRequest(model_name="cnn"), timeout=20),
        "RepositoryModelLoad": lambda: i.RepositoryModelLoad(
            ipb.RepositoryModelLoadRequest(model_name="cnn"), timeout=60),
        "Push": lambda: u.Push(iter([upb.PushRequest()]), timeout=20),
        # A read: every role allows it (the inference role at least).
        "ServerLive": lambda: i.ServerLive(ipb.ServerLiveRequest(), timeout=20),
    }


target, creds, drop = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "drop"
import os
if drop:  # modules are loaded: from here on this process is uid/gid nobody
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
out = {}
with channel(target, creds) as ch:
    for name, call in calls(ch).items():
        try:
            call()
            out[name] = ["OK", ""]
        except grpc.RpcError as e:
            out[name] = [e.code().name, e.details() or ""]
print(json.dumps(out))
"""
MUTATING = [
    "Pin",
    "Unpin",
    "Evict",
    "Load",
    "Activate",
    "Rollback",
    "RepositoryModelUnload",
    "RepositoryModelLoad",
    "Push",
]
ROLE = {name: "update" if name == "Push" else "operate" for name in MUTATING}


def _run(target: str, creds: list[str | None] | None = None, drop: bool = False) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", CALLS, target, json.dumps(creds), "drop" if drop else "keep"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _refused(results: dict[str, list[str]]) -> None:
    for name in MUTATING:
        code, details = results[name]
        assert code == "PERMISSION_DENIED", (name, code, details)
        assert f"{ROLE[name]!r} role" in details, (name, details)
    assert results["ServerLive"][0] == "OK"


def _allowed(results: dict[str, list[str]]) -> None:
    for name in MUTATING:
        assert results[name][0] != "PERMISSION_DENIED", (name, results[name])
    assert results["ServerLive"][0] == "OK"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, demo_src: Path) -> Iterator[DaemonProcess]:
    from tests.conftest import import_demo

    tmp = tmp_path_factory.mktemp("access")
    pki = make_pki(tmp / "pki", clients=("operator", "stranger"))
    root = import_demo(tmp / "store", demo_src)
    daemon = DaemonProcess(
        root,
        # The unprivileged user may connect to the serving socket (its group), not the admin one.
        server__socket_group="nogroup" if os.geteuid() == 0 else "",
        server__tls_cert=str(pki["server"]),
        server__tls_key=str(pki["server_key"]),
        server__tls_client_ca=str(pki["ca"]),
        server__client_roles={"edged-test-operator": ["operate", "update"]},
    )
    os.chmod(daemon.sock_dir, 0o755)  # mkdtemp's 0700 would keep everyone else out
    daemon.pki = pki  # type: ignore[attr-defined]
    daemon.start()
    yield daemon
    daemon.stop()


def test_an_unprivileged_local_user_changes_nothing(daemon: DaemonProcess) -> None:
    if os.geteuid() != 0:
        pytest.skip("acting as uid nobody needs root (run the suite as root, as CI does)")
    assert oct(daemon.socket.stat().st_mode & 0o777) == "0o660"
    assert oct(daemon.admin_socket.stat().st_mode & 0o777) == "0o600"
    # The serving socket: inference only, every mutating call refused naming the role.
    _refused(_run(daemon.unix_url, drop=True))
    # The admin socket: the kernel refuses the connection itself.
    locked_out = _run(daemon.admin_url, drop=True)
    assert {code for code, _ in locked_out.values()} == {"UNAVAILABLE"}, locked_out
    # The daemon's own user (root here) on the admin socket: every role.
    _allowed(_run(daemon.admin_url))


def test_tcp_roles_follow_the_client_certificate(daemon: DaemonProcess) -> None:
    pki = daemon.pki  # type: ignore[attr-defined]
    target = f"localhost:{daemon.tcp_port}"
    ca = str(pki["ca"])
    # TLS without a client certificate is refused by the handshake (mutual TLS); a
    # certificate from the same CA that is granted nothing gets inference only.
    _refused(_run(target, [ca, str(pki["stranger_key"]), str(pki["stranger"])]))
    _allowed(_run(target, [ca, str(pki["operator_key"]), str(pki["operator"])]))


def test_a_remote_listener_without_tls_is_refused_at_start(tmp_path: Path) -> None:
    from edged.errors import ConfigError
    from edged.settings import load

    config = tmp_path / "edged.toml"
    config.write_text('[server]\ntcp = "0.0.0.0:8001"\n')
    with pytest.raises(ConfigError) as err:
        load(config)
    assert "server: tcp: 0.0.0.0:8001" in err.value.message and "TLS" in err.value.message
    config.write_text('[server]\ntcp = "0.0.0.0:8001"\nallow_insecure_remote = true\n')
    assert load(config).server.tcp == "0.0.0.0:8001"
    config.write_text('[server]\ntcp_roles = ["inference", "operate"]\n')
    with pytest.raises(ConfigError) as err:
        load(config)
    assert "mutual TLS" in err.value.message
