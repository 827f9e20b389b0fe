"""The patch engine on ONNX files as real exporters write them (tests/onnx_layouts.py): every
tensor found wherever it lives, round trips under hypothesis over tensor edits in every layout, a
real fine-tune coded tensor-aware in Constant-node and If-subgraph models, retrains never worse
than generic zstd, metadata edits that cost their changed bytes (in the generic path too), and
refusal of bad patches."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.formats import detect
from edged.update import patch
from tests import ROOT
from tests.onnx_layouts import LAYOUTS, Params, all_payloads, build, forward, mlp, sparsify

SIZES = (16, 32, 24, 8)
IN_FILE = [layout for layout in LAYOUTS if layout != "external"]


def params_for(layout: str, seed: int = 0, sizes: tuple[int, ...] = SIZES) -> Params:
    params = mlp(sizes, seed)
    return sparsify(params) if layout == "sparse" else params


def model_file(params: Params, path: Path, layout: str, **options: Any) -> Path:
    """The file the patch engine sees: the model, or for the external layout its data file."""
    build(params, path, layout, **options)
    return path.with_name(f"{path.name}.data") if layout == "external" else path


def roundtrip(base: Path, target: Path, out: Path, **options: Any) -> patch.Header:
    header = patch.create(base, target, out.with_suffix(".patch"), **options)
    assert header == patch.read_header(out.with_suffix(".patch"))
    patch.apply(base, out.with_suffix(".patch"), out)
    assert out.read_bytes() == target.read_bytes()
    return header


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_finds_every_tensor_at_its_bytes_and_runs(tmp_path: Path, layout: str) -> None:
    params = params_for(layout)
    path = tmp_path / "model.onnx"
    data = model_file(params, path, layout)
    x = np.random.default_rng(1).standard_normal((5, SIZES[0])).astype(np.float32)
    answer = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    np.testing.assert_allclose(answer, forward(params, x), rtol=1e-4, atol=1e-5)

    with data.open("rb") as f:
        layout_found = detect(f, data)
    content = data.read_bytes()
    found = sorted(content[t.offset : t.end] for t in layout_found.tensors)
    if layout == "external":
        assert layout_found.kind == "onnx-external"
        expected = sorted(
            onnx.numpy_helper.to_array(t).tobytes() for t in onnx.load(str(path)).graph.initializer
        )
    else:
        assert layout_found.kind == "onnx"
        expected = sorted(all_payloads(onnx.load(str(path), load_external_data=False)))
    assert found == expected  # each payload exactly once, at its exact bytes
    names = [t.name for t in layout_found.tensors]
    assert len(set(names)) == len(names)
    if layout in ("if", "loop", "scan"):
        assert any("/" in name for name in names), names  # found inside subgraphs


EDITS = ("finetune", "retrain", "resize", "same")


@st.composite
def model_edit(draw: st.DrawFn) -> dict[str, Any]:
    layers = len(SIZES) - 1
    return {
        "layout": draw(st.sampled_from(LAYOUTS)),
        "edits": draw(st.lists(st.sampled_from(EDITS), min_size=layers, max_size=layers)),
        "rename": draw(st.sampled_from(["", "v2_"])),
        "doc": draw(st.sampled_from(["", "release 2", "x" * 300])),
        "seed": draw(st.integers(0, 2**16)),
    }


def edited(params: Params, edits: list[str], seed: int) -> Params:
    rng = np.random.default_rng(seed)
    out = []
    for (w, b), edit in zip(params, edits, strict=True):
        if edit == "finetune":
            out.append(((w * (1 + 1e-3 * rng.standard_normal(w.shape))).astype(np.float32), b))
        elif edit == "retrain":
            out.append(((rng.standard_normal(w.shape) / np.sqrt(w.shape[0])).astype(np.float32), b))
        else:
            out.append((w, b))
    # A resized hidden layer changes two weights' shapes (and the bias between them).
    for i, edit in enumerate(edits[:-1]):
        if edit == "resize":
            (w1, b1), (w2, b2) = out[i], out[i + 1]
            out[i] = (np.concatenate([w1, w1[:, :3]], 1), np.concatenate([b1, b1[:3]]))
            out[i + 1] = (np.concatenate([w2, w2[:3] * 0.5], 0), b2)
    return out


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=model_edit())
def test_tensor_edits_round_trip_in_every_layout(tmp_path: Path, case: dict[str, Any]) -> None:
    work = Path(tempfile.mkdtemp(dir=tmp_path))  # hypothesis runs many cases in one tmp_path
    (work / "a").mkdir()
    (work / "b").mkdir()
    params = params_for(case["layout"])
    base = model_file(params, work / "a" / "model.onnx", case["layout"])
    changed = edited(params, case["edits"], case["seed"])
    target = model_file(
        changed, work / "b" / "model.onnx", case["layout"], doc=case["doc"], rename=case["rename"]
    )
    roundtrip(base, target, work / "out")


def test_renamed_tensors_are_matched_by_shape_and_position(tmp_path: Path) -> None:
    """An exporter that names every node differently: the same weights still cost nothing."""
    params = mlp((64, 256, 128, 10))
    base = build(params, tmp_path / "a.onnx", "constants")
    target = build(params, tmp_path / "b.onnx", "constants", rename="export2/")
    header = roundtrip(base, target, tmp_path / "out")
    tensor = header.coded["tensor"]
    with target.open("rb") as f:
        every = len(detect(f, target).tensors)  # the 40-byte last bias stays in the container
    assert every == 5
    assert tensor["tensors"] == every and tensor["payload"] == 0, header.coded
    assert header.payload_size < 1024, header.summary()


# -- a real fine-tune: the digits classifier, trained here, then fine-tuned for a few steps -----


@pytest.fixture(scope="module")
def digits_pair() -> tuple[Params, Params]:
    from edged import demo_digits as dd

    x, y, _, _ = dd.dataset()
    trained = dd.train((64, 128, 64, 10), x, y, epochs=8)
    # A fine-tune: a few steps of Adam on a fifth of the data (a new customer's images), at a
    # small learning rate — what moves every weight a little.
    tuned = dd.train((64, 128, 64, 10), x[::5], y[::5], init=trained, steps=20, lr=2e-4, seed=3)
    return trained, tuned


@pytest.mark.parametrize("layout", ["constants", "if"])
def test_a_real_fine_tune_is_coded_tensor_aware_and_says_so(
    tmp_path: Path, digits_pair: tuple[Params, Params], layout: str
) -> None:
    trained, tuned = digits_pair
    moved = [np.abs(t[0] / a[0] - 1) for a, t in zip(trained, tuned, strict=True)]
    assert all(0 < np.median(m) < 0.1 for m in moved)  # every weight moved, a little
    base = build(trained, tmp_path / "a.onnx", layout)
    target = build(tuned, tmp_path / "b.onnx", layout)
    header = roundtrip(base, target, tmp_path / "out")
    kinds = {op.kind for op in header.ops}
    assert kinds & {patch.XOR, patch.DIFF}, header.summary()
    tensor = header.coded["tensor"]
    assert tensor["bytes"] > 0.95 * header.target_size, header.coded
    generic = roundtrip(base, target, tmp_path / "out-generic", tensor_aware=False)
    assert header.payload_size < 0.8 * generic.payload_size
    assert generic.note == "tensor-aware coding off"

    # The person creating and inspecting the patch is told the same.
    cli = [sys.executable, "-m", "edged", "patch"]
    made = subprocess.run(
        [*cli, "create", "--base", str(base), "--target", str(target), "-o", str(tmp_path / "p")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    assert f"in {tensor['tensors']} tensors coded tensor-aware" in made.stdout, made.stdout
    shown = subprocess.run(
        [*cli, "inspect", str(tmp_path / "p")], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert '"tensor"' in shown.stdout and '"layout": "onnx"' in shown.stdout, shown.stdout


@pytest.mark.parametrize("layout", ["constants", "if"])
def test_a_metadata_only_change_costs_under_a_kilobyte(tmp_path: Path, layout: str) -> None:
    params = mlp((64, 512, 256, 10))
    base = build(params, tmp_path / "a.onnx", layout)
    target = build(params, tmp_path / "b.onnx", layout, doc="release 2", producer="exporter-2")
    header = roundtrip(base, target, tmp_path / "out")
    assert header.target_size > 500_000
    assert (tmp_path / "out.patch").stat().st_size < 1024, header.summary()


def test_a_retrain_is_never_worse_than_generic_zstd(tmp_path: Path) -> None:
    """Weights unrelated to the old ones: each tensor takes the smaller of its XOR, difference
    and own byte planes and zstd against the old tensor."""
    base = build(mlp((64, 256, 256, 10), 0), tmp_path / "a.onnx", "if")
    target = build(mlp((64, 256, 256, 10), 7), tmp_path / "b.onnx", "if")
    header = roundtrip(base, target, tmp_path / "out")
    generic = roundtrip(base, target, tmp_path / "out-generic", tensor_aware=False)
    assert header.payload_size <= generic.payload_size
    assert patch.PLANES in {op.kind for op in header.ops}, header.summary()
    assert patch.read_header(tmp_path / "out.patch") == header  # format 2 reads back


def test_a_patch_without_planes_stays_readable_as_format_1(tmp_path: Path) -> None:
    params = mlp(SIZES)
    base = build(params, tmp_path / "a.onnx", "constants")
    target = build(
        edited(params, ["finetune", "same", "same"], 1), tmp_path / "b.onnx", "constants"
    )
    roundtrip(base, target, tmp_path / "out")
    raw = (tmp_path / "out.patch").read_bytes()
    assert b'"format":1,' in raw


def test_a_small_edit_in_a_large_file_without_layout_costs_its_changed_bytes(
    tmp_path: Path,
) -> None:
    """The generic path: 12 MB of opaque bytes, a few bytes inserted near the start (everything
    after them moves) and a few replaced near the end."""
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, 12 << 20, dtype=np.uint8).tobytes()
    target = data[:1000] + b"producer 2.0" + data[1000 : 11 << 20] + b"XY" + data[(11 << 20) + 2 :]
    (tmp_path / "base").write_bytes(data)
    (tmp_path / "target").write_bytes(target)
    header = roundtrip(tmp_path / "base", tmp_path / "target", tmp_path / "out")
    assert header.note == "target: no tensor layout"
    assert (tmp_path / "out.patch").stat().st_size < 1024, header.summary()


# -- refusal ------------------------------------------------------------------------------------


@pytest.fixture
def nested(tmp_path: Path) -> Path:
    """A patch between two retrained If-subgraph models (XOR and PLANES operations)."""
    build(mlp(SIZES, 0), tmp_path / "base", "if")
    build(mlp(SIZES, 4), tmp_path / "target", "if")
    header = patch.create(tmp_path / "base", tmp_path / "target", tmp_path / "p")
    assert patch.PLANES in {op.kind for op in header.ops}
    return tmp_path


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_flipped_bit_in_a_subgraph_patch_is_refused(nested: Path, data: st.DataObject) -> None:
    good = (nested / "p").read_bytes()
    bit = data.draw(st.integers(0, len(good) * 8 - 1))
    bad = bytearray(good)
    bad[bit // 8] ^= 1 << (bit % 8)
    (nested / "bad").write_bytes(bytes(bad))
    with pytest.raises(patch.PatchError):
        patch.apply(nested / "base", nested / "bad", nested / "out")
    assert not (nested / "out").exists()
    assert not [p for p in nested.iterdir() if ".tmp-" in p.name]


def test_a_truncated_patch_or_a_wrong_base_is_refused_with_nothing_written(nested: Path) -> None:
    good = (nested / "p").read_bytes()
    for n in (0, 9, len(good) // 3, len(good) - 1):
        (nested / "bad").write_bytes(good[:n])
        with pytest.raises(patch.PatchError):
            patch.apply(nested / "base", nested / "bad", nested / "out")
        assert not (nested / "out").exists()
    other = bytearray((nested / "base").read_bytes())
    other[len(other) // 2] ^= 0x40
    (nested / "other").write_bytes(bytes(other))
    with pytest.raises(patch.PatchError, match="wrong base"):
        patch.apply(nested / "other", nested / "p", nested / "out")
    assert not (nested / "out").exists()
    assert not [name for name in os.listdir(nested) if ".tmp-" in name]
