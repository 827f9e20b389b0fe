"""A client of the OCI distribution API: the few endpoints edged needs, over httpx.

Why not oras-py: it downloads a blob in one streamed GET with no way to start at an offset, and
it is synchronous. A node on a thin link must resume a download where the last one stopped (an
HTTP ``Range`` request, which the distribution spec requires registries to honour), cap its
rate, and do it on the daemon's event loop. The surface used here is six endpoints of the spec
(tags list, manifest GET/PUT, blob HEAD/GET, monolithic upload POST+PUT), written against the
spec; httpx brings HTTP/1.1 keep-alive, TLS with a private CA, timeouts and streaming.

Authentication: HTTP basic credentials, and the registry token flow (a 401 with ``WWW-Authenticate:
Bearer realm=...,service=...,scope=...`` -> a token from the realm, sent as a bearer) that Docker
Hub, GHCR, ECR, Harbor and Zot use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from edged.errors import EdgedError, ErrorCode
from edged.store.chunks import file_chunks

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MAX_MANIFEST_BYTES = 4 << 20  # an artifact manifest lists a few dozen layers
UPLOAD_CHUNK = 1 << 20

_REPOSITORY = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class RegistryError(EdgedError):
    """The registry refused, or answered something that is not what the spec says."""

    def __init__(self, message: str, reason: str = "registry", status: int = 0) -> None:
        super().__init__(
            message,
            ErrorCode.UNAVAILABLE if status >= 500 or not status else ErrorCode.FAILED_PRECONDITION,
        )
        self.reason = reason
        self.status = status


def check_repository(name: str) -> str:
    if len(name) > 255 or not _REPOSITORY.match(name):
        raise EdgedError(
            f"repository {name!r}: not an OCI repository name", ErrorCode.INVALID_ARGUMENT
        )
    return name


def check_reference(ref: str) -> str:
    if not (_TAG.match(ref) or _DIGEST.match(ref)):
        raise EdgedError(
            f"reference {ref!r}: not a tag or a sha256 digest", ErrorCode.INVALID_ARGUMENT
        )
    return ref


def check_digest(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise EdgedError(
            f"digest {digest!r}: expected sha256:<64 hex digits>", ErrorCode.INVALID_ARGUMENT
        )
    return digest


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclasses.dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""


@dataclasses.dataclass(frozen=True)
class Fetched:
    """A manifest as the registry served it: its exact bytes and their digest."""

    digest: str
    data: bytes
    media_type: str


def _challenge(header: str) -> dict[str, str]:
    """``Bearer realm="...",service="...",scope="..."`` -> its parameters."""
    scheme, _, rest = header.partition(" ")
    if scheme.lower() != "bearer":
        return {}
    return {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}


class Registry:
    """One registry, as ``https://host[:port]`` (or ``http://`` for a registry on loopback)."""

    def __init__(
        self,
        url: str,
        credentials: Credentials | None = None,
        ca_file: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise EdgedError(
                f"registry {url!r}: expected http:// or https://", ErrorCode.INVALID_ARGUMENT
            )
        self.credentials = credentials or Credentials()
        verify: Any = str(ca_file) if ca_file else True
        self.http = httpx.AsyncClient(
            verify=verify,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=True,  # blob GETs may redirect to a CDN or object store
        )
        self._token: str | None = None

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # -- requests with authentication ----------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        if self._token:
            return {"Authorization": f"Bearer {self._token}"}
        return {}

    def _basic(self) -> httpx.BasicAuth | None:
        c = self.credentials
        return httpx.BasicAuth(c.username, c.password) if c.username else None

    async def _login(self, response: httpx.Response) -> bool:
        """Answer a 401's challenge; False when there is nothing to answer it with."""
        params = _challenge(response.headers.get("www-authenticate", ""))
        if "realm" not in params:
            return False
        query: dict[str, str] = {k: params[k] for k in ("service", "scope") if k in params}
        token = await self.http.get(
            params["realm"], params=query, auth=self._basic() or httpx.USE_CLIENT_DEFAULT
        )
        if token.status_code != 200:
            raise RegistryError(
                f"registry token endpoint answered {token.status_code}", "auth", token.status_code
            )
        body = token.json()
        self._token = body.get("token") or body.get("access_token")
        return bool(self._token)

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self.url + path
        headers = {**kwargs.pop("headers", {}), **self._auth_headers()}
        basic = None if self._token else self._basic()
        request = self.http.build_request(method, url, headers=headers, **kwargs)
        response = await self.http.send(
            request, auth=basic or httpx.USE_CLIENT_DEFAULT, stream=True
        )
        if response.status_code == 401 and not self._token:
            await response.aclose()
            if await self._login(response):
                request = self.http.build_request(
                    method, url, headers={**headers, **self._auth_headers()}, **kwargs
                )
                response = await self.http.send(request, stream=True)
        return response

    async def _call(
        self, method: str, path: str, ok: tuple[int, ...], **kwargs: Any
    ) -> httpx.Response:
        try:
            response = await self._send(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise RegistryError(
                f"registry {self.url}: {type(e).__name__}: {e}", "unreachable"
            ) from None
        if response.status_code not in ok:
            body = (await response.aread())[:300].decode(errors="replace")
            await response.aclose()
            raise RegistryError(
                f"{method} {path}: registry answered {response.status_code} {body.strip()}",
                "not_found" if response.status_code == 404 else "registry",
                response.status_code,
            )
        return response

    # -- the endpoints -------------------------------------------------------------------------

    async def tags(self, repository: str) -> list[str]:
        check_repository(repository)
        try:
            response = await self._call("GET", f"/v2/{repository}/tags/list", (200,))
        except RegistryError as e:
            if e.status == 404:
                return []
            raise
        body = await response.aread()
        tags = httpx.Response(200, content=body).json().get("tags") or []
        return [t for t in tags if isinstance(t, str)]

    async def manifest(self, repository: str, reference: str) -> Fetched:
        """The manifest ``reference`` (tag or digest) names; its digest is computed here (a
        registry's ``Docker-Content-Digest`` is not trusted) and checked against a digest
        reference."""
        check_repository(repository)
        check_reference(reference)
        response = await self._call(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            (200,),
            headers={"Accept": OCI_MANIFEST},
        )
        data = bytearray()
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) > MAX_MANIFEST_BYTES:
                await response.aclose()
                raise RegistryError(
                    f"manifest {repository}:{reference}: larger than {MAX_MANIFEST_BYTES} bytes",
                    "bad_manifest",
                )
        digest = sha256_digest(bytes(data))
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(
                f"manifest {repository}@{reference}: its bytes hash to {digest}", "digest_mismatch"
            )
        return Fetched(digest, bytes(data), response.headers.get("content-type", ""))

    async def put_manifest(self, repository: str, reference: str, data: bytes) -> str:
        check_repository(repository)
        check_reference(reference)
        response = await self._call(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            (201, 200),
            content=data,
            headers={"Content-Type": OCI_MANIFEST},
        )
        await response.aclose()
        return sha256_digest(data)

    async def has_blob(self, repository: str, digest: str) -> bool:
        check_digest(digest)
        try:
            response = await self._call("HEAD", f"/v2/{repository}/blobs/{digest}", (200,))
        except RegistryError as e:
            if e.status == 404:
                return False
            raise
        await response.aclose()
        return True

    async def push_blob(
        self, repository: str, path: Path | None = None, data: bytes | None = None
    ) -> str:
        """Upload a file's (or ``data``'s) bytes unless the registry holds them; their digest."""
        check_repository(repository)
        if data is not None:
            digest = sha256_digest(data)
            size = len(data)
        else:
            assert path is not None
            h = hashlib.sha256()
            with path.open("rb") as f:
                while block := f.read(UPLOAD_CHUNK):
                    h.update(block)
            digest, size = "sha256:" + h.hexdigest(), path.stat().st_size
        if await self.has_blob(repository, digest):
            return digest
        start = await self._call("POST", f"/v2/{repository}/blobs/uploads/", (202,))
        await start.aclose()
        location = start.headers.get("location", "")
        if not location:
            raise RegistryError("blob upload: the registry gave no Location", "registry")
        target = httpx.URL(self.url).join(location)
        params = dict(target.params)
        params["digest"] = digest
        body: Any = data if data is not None else _file_chunks(path)  # type: ignore[arg-type]
        relative = target.raw_path.decode().split("?")[0]
        done = await self._call(
            "PUT",
            relative,
            (201,),
            params=params,
            content=body,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        await done.aclose()
        return digest

    async def blob(self, repository: str, digest: str, offset: int = 0) -> AsyncIterator[bytes]:
        """The blob's bytes from ``offset`` on (a ``Range`` request: a resumed download)."""
        check_digest(digest)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = await self._call(
            "GET", f"/v2/{repository}/blobs/{digest}", (200, 206), headers=headers
        )
        try:
            skip = offset if offset and response.status_code == 200 else 0  # Range ignored
            async for received in response.aiter_bytes(UPLOAD_CHUNK):
                chunk = received
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                    if not chunk:
                        continue
                yield chunk
        except httpx.HTTPError as e:
            raise RegistryError(
                f"blob {digest[:19]}: download cut: {type(e).__name__}: {e}", "unreachable"
            ) from None
        finally:
            await response.aclose()

    async def blob_bytes(self, repository: str, digest: str, limit: int) -> bytes:
        """A small blob whole (a signed update manifest), checked against its digest."""
        data = bytearray()
        async for chunk in self.blob(repository, digest):
            data += chunk
            if len(data) > limit:
                raise RegistryError(
                    f"blob {digest[:19]}: larger than {limit} bytes", "bad_manifest"
                )
        if sha256_digest(bytes(data)) != digest:
            raise RegistryError(
                f"blob {digest[:19]}: its bytes do not match its digest", "digest_mismatch"
            )
        return bytes(data)


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    for _, block in file_chunks(path, UPLOAD_CHUNK):
        yield block
