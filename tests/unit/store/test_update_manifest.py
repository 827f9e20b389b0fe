"""The manifest's `update` section: every field checked, every error naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from edged.errors import ManifestError
from edged.store.manifest import parse

A, B, C = "a" * 64, "b" * 64, "c" * 64


def manifest() -> dict[str, Any]:
    return {
        "schema": 1,
        "name": "ranker",
        "version": "2",
        "variants": [
            {
                "id": "fp32",
                "format": "onnx",
                "file": "m.onnx",
                "sha256": A,
                "size": 100,
                "quality": 1.0,
            },
            {
                "id": "int8",
                "format": "onnx",
                "file": "q.onnx",
                "sha256": B,
                "size": 50,
                "quality": 0.9,
            },
        ],
        "update": {
            "base_version": "1",
            "activate": "immediate",
            "variants": {
                "fp32": {"method": "patch", "base_sha256": C, "sha256": C, "size": 40},
                "int8": {"method": "reuse"},
            },
            "sequence": 7,
            "expires": "2031-01-01T00:00:00Z",
        },
    }


def test_valid_update_section() -> None:
    section = parse(manifest()).update
    assert section is not None
    assert section.base_version == "1" and section.activate == "immediate"
    assert section.transfers["fp32"].method == "patch" and section.bytes_to_send == 40
    assert section.sequence == 7 and section.expires == 1924992000.0
    assert section.devices == () and section.groups == ()


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda u: u.pop("base_version"), "update.base_version"),
        (lambda u: u.update(activate="later"), "update.activate"),
        (lambda u: u["variants"].pop("int8"), "update.variants"),
        (lambda u: u["variants"].update(extra={"method": "reuse"}), "update.variants.extra"),
        (lambda u: u["variants"]["int8"].update(method="torrent"), "update.variants.int8.method"),
        (lambda u: u["variants"]["fp32"].pop("base_sha256"), "update.variants.fp32.base_sha256"),
        (lambda u: u["variants"]["fp32"].update(size=0), "update.variants.fp32.size"),
        (lambda u: u["variants"]["fp32"].update(sha256="xyz"), "update.variants.fp32.sha256"),
        (
            lambda u: u["variants"].update(int8={"method": "full", "sha256": A, "size": 50}),
            "update.variants.int8.sha256",
        ),
        (lambda u: u.pop("sequence"), "update.sequence"),
        (lambda u: u.update(sequence=0), "update.sequence"),
        (lambda u: u.update(sequence=True), "update.sequence"),
        (lambda u: u.pop("expires"), "update.expires"),
        (lambda u: u.update(expires="next week"), "update.expires"),
        (lambda u: u.update(expires="2031-01-01T00:00:00"), "update.expires"),
        (lambda u: u.update(targets={"devices": "d1"}), "update.targets.devices"),
        (lambda u: u.update(targets={"hosts": ["d1"]}), "update.targets"),
    ],
)
def test_bad_update_sections_name_the_field(edit: Any, field: str) -> None:
    raw = copy.deepcopy(manifest())
    edit(raw["update"])
    with pytest.raises(ManifestError) as err:
        parse(raw)
    assert field in err.value.message
