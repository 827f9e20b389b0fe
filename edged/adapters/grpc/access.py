"""Roles: what a connection may do (docs/security.md).

``inference``: infer, stream, read metadata, statistics, versions, labels, shared memory.
``operate``: change what is resident or served (pin, unpin, evict, load, activate, rollback,
repository load and unload). ``update``: push new versions.

Who may connect to a unix socket is the kernel's decision (the socket file's owner, group and
mode, checked at connect); what its clients may do is the socket's roles. gRPC's Python server
does not give a call its unix peer's credentials (SO_PEERCRED stays inside gRPC's core), so edged
opens two sockets, as Docker and systemd do: the serving socket (inference, mode 0660 for the
clients' group) and the admin socket (every role, mode 0600, or 0660 for an operators' group).
On TCP, roles follow the client's certificate (mutual TLS: its common name or a DNS/URI subject
alternative name, from ``server.client_roles``); a connection without one gets ``tcp_roles``,
never more than inference.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edged.errors import EdgedError, ErrorCode

Roles = frozenset[str]
ALL: Roles = frozenset({"inference", "operate", "update"})


@dataclass(frozen=True)
class Access:
    """The roles granted on one gRPC server's listeners."""

    unix: Roles
    tcp: Roles = frozenset({"inference"})
    clients: Mapping[str, Roles] = field(default_factory=dict)
    unix_source: str = "the serving socket"

    @classmethod
    def admin(cls) -> Access:
        return cls(unix=ALL, tcp=frozenset(), unix_source="the admin socket")

    def roles(self, context: Any) -> tuple[Roles, str]:
        """The roles of the call's connection, and where they come from (for the message)."""
        peer = context.peer()
        if peer.startswith("unix:"):
            return self.unix, self.unix_source
        granted = set(self.tcp)
        names = _certificate_names(context.auth_context()) if self.clients else ()
        known = [n for n in names if n in self.clients]
        for name in known:
            granted |= self.clients[name]
        if known:
            return frozenset(granted), f"client certificate {known[0]!r}"
        return self.tcp, "a TCP connection without a granted client certificate"

    def require(self, context: Any, role: str, method: str) -> None:
        roles, source = self.roles(context)
        if role not in roles:
            held = ", ".join(sorted(roles)) or "none"
            raise EdgedError(
                f"{method} needs the {role!r} role; {source} grants {held} "
                "(docs/security.md: the admin socket, or a client certificate in "
                "server.client_roles)",
                ErrorCode.PERMISSION_DENIED,
            )


def _certificate_names(auth: Mapping[str, Iterable[bytes]]) -> list[str]:
    """The verified client certificate's common name and subject alternative names."""
    names: list[str] = []
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth.get(key, ()):
            text = value.decode(errors="replace")
            names.append(text.removeprefix("DNS:").removeprefix("URI:"))
    return names
