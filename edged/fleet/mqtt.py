"""An MQTT client of the fleet's broker, as the node and the controller both open it."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from edged.errors import EdgedError, ErrorCode


def client_for(
    broker: str,
    identifier: str,
    username: str = "",
    password: str = "",
    ca_file: str | Path | None = None,
    **options: Any,
) -> aiomqtt.Client:
    """A client of ``broker`` (``mqtt://``, or ``mqtts://``: TLS verified against ``ca_file`` or
    the system's CAs); ``options`` go to aiomqtt (a last will, keep-alive)."""
    url = urlsplit(broker)
    if url.scheme not in ("mqtt", "mqtts"):
        raise EdgedError(
            f"broker {broker!r}: expected mqtt:// or mqtts://", ErrorCode.INVALID_ARGUMENT
        )
    tls = (
        ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if url.scheme == "mqtts"
        else None
    )
    return aiomqtt.Client(
        url.hostname or "127.0.0.1",
        url.port or (8883 if tls else 1883),
        identifier=identifier,
        username=username or None,
        password=password or None,
        tls_context=tls,
        **options,
    )
