"""Warm-up samples from the manifest: checked at import, used at load."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from edged.errors import InvalidInputError, ManifestError
from edged.runtime.base import TensorSpec, warmup_inputs
from edged.store.manifest import parse

BASE: dict[str, Any] = {
    "schema": 1,
    "name": "m",
    "version": "1",
    "variants": [
        {
            "id": "fp32",
            "format": "onnx",
            "file": "m.onnx",
            "sha256": "0" * 64,
            "size": 1,
            "quality": 1.0,
        }
    ],
}
SPECS = (TensorSpec("input", "FP32", (-1, 4)), TensorSpec("mask", "INT64", (-1, 4)))


def manifest(warmup: object) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    raw["warmup"] = warmup
    return raw


def test_sample_is_used_in_the_signature_datatype() -> None:
    m = parse(manifest({"inputs": {"input": {"shape": [1, 4], "data": [1, 2, 3, 4]}}}))
    arrays = warmup_inputs(SPECS, m.warmup)
    assert arrays["input"].dtype == np.float32
    assert arrays["input"].tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert arrays["mask"].shape == (1, 4)  # not in the sample: built from the signature


def test_prompt_sample() -> None:
    m = parse(manifest({"prompt": "Invoice number"}))
    assert m.warmup is not None and m.warmup.prompt == "Invoice number"


@pytest.mark.parametrize(
    ("warmup", "field"),
    [
        ({"inputs": {"input": {"shape": [1, 4], "data": [1, 2, 3]}}}, "warmup.inputs.input.data"),
        ({"inputs": {"input": {"shape": [1, -4], "data": []}}}, "warmup.inputs.input.shape"),
        ({"inputs": {"input": [1, 2]}}, "warmup.inputs.input"),
        ({"prompt": 3}, "warmup.prompt"),
        ({}, "warmup"),
        ("hello", "warmup"),
    ],
)
def test_bad_samples_are_refused_naming_the_field(warmup: object, field: str) -> None:
    with pytest.raises(ManifestError, match=field.replace(".", r"\.")):
        parse(manifest(warmup))


def test_sample_for_an_input_the_model_lacks_names_it() -> None:
    m = parse(manifest({"inputs": {"pixels": {"shape": [1], "data": [0]}}}))
    with pytest.raises(InvalidInputError, match="pixels"):
        warmup_inputs(SPECS, m.warmup)
