"""Names that come from outside (manifests, the network, the config) and become path components
or label values: checked once, here, before anything uses them."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from edged.errors import ManifestError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def check_name(name: object, what: str = "name") -> str:
    """A model or variant name: ``[a-z0-9][a-z0-9._-]{0,63}`` (safe as a path component)."""
    if not isinstance(name, str) or not NAME_RE.match(name) or name in {".", ".."}:
        raise ManifestError(
            f"{what}: {name!r} is not a valid name (lowercase letters, digits, '.', '_', '-'; "
            "starting with a letter or digit; at most 64 characters)"
        )
    return name


def check_version(version: object, what: str = "version") -> str:
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise ManifestError(
            f"{what}: {version!r} is not a valid version (letters, digits, '.', '_', '+', '-'; "
            "at most 64 characters)"
        )
    return version


def check_relative_file(path: object, what: str) -> str:
    """A file name inside the manifest's directory: relative, no '..', no absolute path."""
    if not isinstance(path, str) or not path or "\x00" in path or "\\" in path:
        raise ManifestError(f"{what}: expected a relative file path, got {path!r}")
    pure = PurePosixPath(path)
    if pure.is_absolute() or any(part in {"..", ""} for part in pure.parts):
        raise ManifestError(f"{what}: {path!r} leaves the manifest's directory")
    return path


def version_key(version: str) -> tuple[int, int, str]:
    """Numeric versions sort as numbers (2 < 10), others lexically after them."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)
