"""Fuzz of what arrives from the network before any signature or digest vouches for it
(issue 17): manifests and patch files. Whatever the bytes, the parsers answer with their own
error (ManifestError, PatchError), never another exception, and never write a wrong target."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.errors import EdgedError, ManifestError
from edged.store.manifest import loads
from edged.update import patch

VALID = {
    "schema": 1,
    "name": "m",
    "version": "2",
    "variants": [
        {"id": "fp32", "format": "onnx", "file": "a.onnx", "sha256": "a" * 64, "size": 10,
         "quality": 1.0},
    ],
    "update": {
        "base_version": "1", "activate": "manual", "sequence": 3,
        "expires": "2031-01-01T00:00:00Z",
        "variants": {"fp32": {"method": "patch", "base_sha256": "b" * 64, "sha256": "c" * 64,
                              "size": 5}},
    },
}  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


PATHS = [p for p in _paths(VALID) if p]


@settings(max_examples=1500, deadline=None, derandomize=True)
@given(edits=st.lists(st.tuples(st.sampled_from(PATHS), json_values), min_size=1, max_size=3))
def test_mutated_manifests_get_a_manifest_error_or_parse(edits: list[Any]) -> None:
    raw = json.loads(json.dumps(VALID))
    for path, value in edits:
        target = raw
        try:
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    with contextlib.suppress(ManifestError):  # a manifest, or the parser's own error
        loads(json.dumps(raw))


@settings(max_examples=500, deadline=None, derandomize=True)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_are_not_a_manifest(data: bytes) -> None:
    with pytest.raises(ManifestError):
        loads(data)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    root = tmp_path_factory.mktemp("fuzzpatch")
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    target = bytearray(base)
    target[5000:5100] = rng.integers(0, 256, 100, dtype=np.uint8).tobytes()
    (root / "base").write_bytes(base)
    (root / "target").write_bytes(bytes(target))
    patch.create(root / "base", root / "target", root / "good.patch")
    return root / "base", root / "good.patch", bytes(target)


@settings(
    max_examples=800,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.floats(0, 1)))  # fmt: skip
def test_damaged_patches_are_refused_never_misapplied(
    pair: tuple[Path, Path, bytes], tmp_path_factory: pytest.TempPathFactory, flips: Any, cut: Any
) -> None:
    base, good, target = pair
    data = bytearray(good.read_bytes())
    for where, mask in flips:
        data[min(int(where * len(data)), len(data) - 1)] ^= mask
    if cut is not None:
        del data[int(cut * len(data)) :]
    work = tmp_path_factory.mktemp("p")
    damaged, out = work / "damaged.patch", work / "out"
    damaged.write_bytes(bytes(data))
    try:
        patch.apply(base, damaged, out)
    except EdgedError:
        assert not out.exists()  # nothing under the final name
        return
    assert out.read_bytes() == target  # a flip the format tolerates must still give the target
