"""The node's side of a fleet (docs/fleet.md): desired state from MQTT, updates pulled from an
OCI registry into the same update session a push uses, reported state back.

A pull is another transport for ``UpdateService.push``: the signed update manifest the artifact
carries for the base this node holds becomes the session's header, and each file it names is
fetched from the registry as the session's chunks, starting where the node already holds it (an
HTTP Range request), so a download cut by a dropped link or a restart resumes, durable bytes are
never fetched twice, and the signature, digests, crash safety and promotion are the push's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt

from edged.errors import EdgedError, ErrorCode, NotFoundError
from edged.fleet import artifact as art
from edged.fleet import state as st
from edged.fleet.mqtt import client_for
from edged.fleet.oci import Credentials, Registry, RegistryError
from edged.fleet.publish import repository_of
from edged.names import version_key
from edged.serving import Chunk, Header, LifecycleService, RepositoryService, UpdateService
from edged.serving.updates import Throttle
from edged.serving.views import VersionStateView
from edged.settings import FleetSettings
from edged.update.protocol import update_id

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 600.0
REPORT_MIN_GAP_SECONDS = 0.5


class RefusedError(EdgedError):
    """The node will not take what the desired state points at; retrying would not change it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ErrorCode.FAILED_PRECONDITION)


def _permanent(error: EdgedError) -> bool:
    """Refusals that fetching again cannot change (a signature, a freshness rule, a malformed
    artifact); a registry or link error, or a digest that did not match, is tried again."""
    reason = getattr(error, "reason", "")
    return (
        isinstance(error, RefusedError)
        or error.code is ErrorCode.UNAUTHENTICATED
        or reason
        in (
            "bad_artifact",
            "bad_manifest",
            "version_exists",
        )
    )


class FleetAgent:
    def __init__(
        self,
        settings: FleetSettings,
        updates: UpdateService,
        lifecycle: LifecycleService,
        repository: RepositoryService,
    ) -> None:
        self.settings = settings
        self.device = settings.device_id or socket.gethostname().lower()
        self.updates = updates
        self.lifecycle = lifecycle
        self.repository = repository
        self.registry = Registry(
            settings.registry,
            Credentials(settings.registry_username, settings.registry_password),
            settings.registry_ca_file,
        )
        self._desired: dict[str, dict[str, st.Target]] = {}  # by topic
        self._tasks: dict[str, tuple[st.Target, asyncio.Task[None]]] = {}
        self._status: dict[str, dict[str, Any]] = {}  # by model: target, error, bytes, method
        self._changed = asyncio.Event()
        self._client: aiomqtt.Client | None = None

    # -- MQTT --------------------------------------------------------------------------------

    def _topics(self) -> list[str]:
        return [*(st.group_topic(g) for g in self.settings.groups), st.device_topic(self.device)]

    def _mqtt(self) -> aiomqtt.Client:
        f = self.settings
        return client_for(
            f.broker,
            f"edged-{self.device}",
            f.broker_username,
            f.broker_password,
            f.broker_ca_file,
            will=aiomqtt.Will(st.online_topic(self.device), b"0", qos=1, retain=True),
            keepalive=30,
            max_queued_outgoing_messages=64,
        )

    async def run(self) -> None:
        """Until cancelled: connect, follow the desired state, report; reconnect on failure."""
        backoff = 1.0
        while True:
            reporter: asyncio.Task[None] | None = None
            try:
                async with self._mqtt() as client:
                    self._client = client
                    await client.publish(st.online_topic(self.device), b"1", qos=1, retain=True)
                    await client.subscribe([(t, 1) for t in self._topics()])
                    reporter = asyncio.ensure_future(self._report_loop(client))
                    backoff = 1.0
                    log.info("fleet: connected to %s as %s", self.settings.broker, self.device)
                    try:
                        async for message in client.messages:
                            self._on_message(str(message.topic), message.payload)
                    except asyncio.CancelledError:
                        # A clean stop: say so (the broker's last will is for the unclean ones).
                        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                            await asyncio.wait_for(
                                client.publish(
                                    st.online_topic(self.device), b"0", qos=1, retain=True
                                ),
                                2.0,
                            )
                        raise
            except aiomqtt.MqttError as e:
                log.warning(
                    "fleet: broker %s: %s; again in %.0fs", self.settings.broker, e, backoff
                )
            finally:
                self._client = None
                if reporter is not None:
                    reporter.cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 60.0)

    async def close(self) -> None:
        for _, task in self._tasks.values():
            task.cancel()
        for _, task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.registry.close()

    def _on_message(self, topic: str, payload: Any) -> None:
        data = (
            bytes(payload)
            if isinstance(payload, (bytes, bytearray))
            else str(payload or "").encode()
        )
        try:
            self._desired[topic] = st.parse_desired(data, topic)
        except st.DesiredStateError as e:
            log.warning("fleet: %s", e.message)
            self._status.setdefault("*", {})["error"] = e.message
            self._changed.set()
            return
        self._status.pop("*", None)
        self._reconcile()

    # -- reconciling -------------------------------------------------------------------------

    def targets(self) -> dict[str, st.Target]:
        return st.merge(self._desired.get(t, {}) for t in self._topics())

    def _reconcile(self) -> None:
        """Start (or restart) the work of each model whose target changed."""
        for model, target in self.targets().items():
            running = self._tasks.get(model)
            if running is not None and running[0] == target:
                continue  # under way, or done: only a changed target starts work again
            if running is not None:
                running[1].cancel()
            self._tasks[model] = (target, asyncio.ensure_future(self._follow(model, target)))

    async def _follow(self, model: str, target: st.Target) -> None:
        """Bring ``model`` to ``target``, retrying what may pass later, with back-off."""
        status = self._status[model] = {"target": "", "error": "", "bytes_fetched": 0, "method": ""}
        delay = self.settings.retry_seconds
        first = True
        while True:
            try:
                await self._converge(model, target, status, jitter=first)
                status["error"] = ""
                self._changed.set()
                return
            except EdgedError as e:
                status["error"] = e.message
                self._changed.set()
                log.warning("fleet: %s -> %s: %s", model, target.reference, e.message)
                if _permanent(e):
                    return
            first = False
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    def _views(self, model: str) -> list[VersionStateView]:
        try:
            return self.lifecycle.versions(model)
        except NotFoundError:
            return []

    def _held(
        self, model: str, views: list[VersionStateView] | None = None
    ) -> tuple[str, dict[str, str]]:
        """(the serving version or "", version -> lifecycle state)."""
        views = self._views(model) if views is None else views
        serving = next((v.version for v in views if v.serving), "")
        return serving, {v.version: v.state for v in views}

    async def _converge(
        self, model: str, target: st.Target, status: dict[str, Any], jitter: bool
    ) -> None:
        repository = repository_of(self.settings.repository_prefix, model)
        fetched = await self.registry.manifest(repository, target.reference)
        artifact = art.parse(fetched.data)
        version = artifact.version
        status["target"] = version
        if artifact.model != model:
            raise RefusedError(
                f"{repository}:{target.reference} is an artifact of {artifact.model!r}"
            )
        if target.version and version != target.version:
            raise RefusedError(
                f"{repository}:{target.reference} holds version {version}, not {target.version}"
            )
        views = self._views(model)
        serving, held = self._held(model, views)
        if version == serving:
            # Told to stay (a rollout aborted): a newer version under evaluation is abandoned.
            if any(
                v.state in ("candidate", "probation") or (v.requested and v.state == "staged")
                for v in views
            ):
                abandoned = await self.lifecycle.cancel(
                    model, f"promotion abandoned: the desired state is version {version}"
                )
                log.info("fleet: %s stays on %s; abandoned %s", model, version, abandoned)
            return
        older = bool(serving) and version_key(version) < version_key(serving)
        if older and not target.version:
            raise RefusedError(
                f"tag {target.channel} resolves to version {version}, older than the serving "
                f"version {serving}: a channel never rolls a node back (name the version to roll "
                "back to)"
            )
        if older:
            if version not in held:
                raise RefusedError(
                    f"cannot roll back to version {version}: this node does not hold it"
                )
            log.info("fleet: %s rolled back to %s (desired state)", model, version)
            await self.lifecycle.rollback(model, to=version)
            return
        if version not in held:
            if jitter and self.settings.jitter_seconds:
                await asyncio.sleep(random.uniform(0, self.settings.jitter_seconds))
            await self._pull(repository, artifact, serving, held, status)
            self.updates.activated(model)  # a model new to this node starts serving here
            serving, held = self._held(model)
        state = held.get(version, "")
        if target.activate and state == "staged" and version != serving:
            self.lifecycle.activate(model, version)
        self._changed.set()

    async def _pull(
        self,
        repository: str,
        artifact: art.Artifact,
        serving: str,
        held: dict[str, str],
        status: dict[str, Any],
    ) -> None:
        preference = [serving, *sorted(held, key=version_key, reverse=True)]
        ref = artifact.update_for(preference)
        if ref is None:
            holding = sorted(held) or "nothing"
            raise RefusedError(
                f"{repository} version {artifact.version}: no update for a node holding {holding}"
            )
        manifest = await self.registry.blob_bytes(
            repository, ref.digest, art.MAX_UPDATE_MANIFEST_BYTES
        )
        # Read before the session checks its signature, to refuse early a manifest that is not
        # the version the artifact says; the session validates it all before a file is fetched.
        try:
            signed = json.loads(manifest)
            name, version = signed.get("name"), signed.get("version")
        except (ValueError, AttributeError):
            raise RefusedError(f"{repository}: the update manifest is not JSON") from None
        if (name, version) != (artifact.model, artifact.version):
            raise RefusedError(
                f"{repository}: the signed manifest is {name!r} version {version!r}, the "
                f"artifact says {artifact.model!r} version {artifact.version!r}"
            )
        roots = tuple(
            [
                await self.registry.blob_bytes(repository, digest, art.MAX_ROOT_BYTES)
                for digest, _ in artifact.roots
            ]
        )
        status["method"] = f"patch from {ref.base_version}" if ref.base_version else "whole files"
        progress = await self.updates.status(update_id(manifest))
        have = {f.variant: f.held for f in progress.files}
        transfers = (signed.get("update") or {}).get("variants") or {}
        throttle = Throttle(self.settings.bandwidth)

        async def parts() -> AsyncIterator[Header | Chunk | None]:
            yield Header(manifest, ref.signature, roots)
            for vid, transfer in sorted(transfers.items()):
                if transfer.get("method") == "reuse":
                    continue
                size, offset = int(transfer["size"]), have.get(vid, 0)
                if offset >= size:
                    continue
                async for received in self.registry.blob(
                    repository, "sha256:" + transfer["sha256"], offset
                ):
                    data = received[: size - offset]  # never past the signed size
                    if not data:
                        break
                    yield Chunk(vid, offset, data)
                    offset += len(data)
                    status["bytes_fetched"] += len(data)
                    self._changed.set()
                    await throttle.account(len(data))

        result = await self.updates.push(parts())
        if result.state == "receiving":
            raise RegistryError(
                f"{repository} version {artifact.version}: download incomplete", "incomplete"
            )
        log.info(
            "fleet: %s version %s fetched (%s, %d bytes): %s",
            artifact.model,
            artifact.version,
            status["method"],
            status["bytes_fetched"],
            result.state,
        )

    # -- reporting ---------------------------------------------------------------------------

    def report(self) -> st.Report:
        names = {e.name for e in self.repository.index()} | set(self.targets())
        models = {}
        for name in sorted(names):
            serving, held = self._held(name)
            s = self._status.get(name, {})
            models[name] = st.ModelReport(
                serving,
                held,
                str(s.get("target", "")),
                str(s.get("error", "")),
                int(s.get("bytes_fetched", 0)),
                str(s.get("method", "")),
            )
        if "*" in self._status:
            models["*"] = st.ModelReport("", {}, error=str(self._status["*"]["error"]))
        return st.Report(self.device, tuple(self.settings.groups), time.time(), models)

    async def _report_loop(self, client: aiomqtt.Client) -> None:
        last = b""
        while True:
            document = self.report().to_json()
            body = dict(document, time=0)
            encoded = json.dumps(body, sort_keys=True).encode()
            if encoded != last:
                await client.publish(
                    st.reported_topic(self.device),
                    json.dumps(document).encode(),
                    qos=1,
                    retain=True,
                )
                last = encoded
                await asyncio.sleep(REPORT_MIN_GAP_SECONDS)  # not one report per chunk fetched
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.settings.report_interval_seconds)
