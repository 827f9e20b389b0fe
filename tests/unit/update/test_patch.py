"""The patch engine: round trips on random and structured edits, and refusal of bad input."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.formats import detect
from edged.update import patch, transform
from edged.update.synthetic import finetune

FAST = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def roundtrip(tmp: Path, base: bytes, target: bytes, **options: Any) -> patch.Header:
    (tmp / "base").write_bytes(base)
    (tmp / "target").write_bytes(target)
    header = patch.create(tmp / "base", tmp / "target", tmp / "p", **options)
    assert header == patch.read_header(tmp / "p")
    (tmp / "out").unlink(missing_ok=True)
    patch.apply(tmp / "base", tmp / "p", tmp / "out")
    assert (tmp / "out").read_bytes() == target
    return header


# -- generic path: random files with inserted, removed and moved regions ----------------------


@st.composite
def edited_pair(draw: st.DrawFn) -> tuple[bytes, bytes]:
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    # Blocks of random bytes and of low-entropy text, so that both match finders get work.
    blocks = []
    for _ in range(draw(st.integers(1, 12))):
        n = draw(st.integers(0, 6000))
        if rng.random() < 0.5:
            blocks.append(rng.randbytes(n))
        else:
            blocks.append(bytes(rng.choice(b"abcdefgh \n") for _ in range(n)))
    base = b"".join(blocks)
    target = bytearray(base)
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["insert", "delete", "move", "replace", "flip"]))
        at = rng.randrange(len(target) + 1)
        n = rng.randrange(1, 3000)
        if kind == "insert":
            target[at:at] = rng.randbytes(n)
        elif kind == "delete":
            del target[at : at + n]
        elif kind == "move" and target:
            piece = bytes(target[at : at + n])
            del target[at : at + n]
            to = rng.randrange(len(target) + 1)
            target[to:to] = piece
        elif kind == "replace":
            target[at : at + n] = rng.randbytes(min(n, len(target) - at))
        elif target:
            target[min(at, len(target) - 1)] ^= 1 << rng.randrange(8)
    return base, bytes(target)


@FAST
@given(edited_pair())
def test_random_edits_round_trip(tmp_path: Path, pair: tuple[bytes, bytes]) -> None:
    base, target = pair
    roundtrip(tmp_path, base, target)


@FAST
@given(edited_pair())
def test_random_edits_round_trip_with_tiny_segments_and_windows(
    tmp_path: Path, pair: tuple[bytes, bytes]
) -> None:
    # Windows far smaller than the base make every segment choose its reference by anchors.
    base, target = pair
    roundtrip(tmp_path, base, target, segment=2048, window=4096)


def test_moved_content_is_found_beyond_the_window(tmp_path: Path) -> None:
    """A region moved from the end of a large base to the start of the target is still a
    reference match: the patch is far smaller than the region."""
    rng = random.Random(7)
    blocks = [rng.randbytes(64 << 10) for _ in range(16)]  # 1 MiB of incompressible data
    base = b"".join(blocks)
    target = blocks[-1] + b"".join(blocks[:-1])
    header = roundtrip(tmp_path, base, target, segment=64 << 10, window=128 << 10)
    assert header.payload_size < 64 << 10, header.summary()


def test_identical_files_give_a_patch_of_copies(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    header = roundtrip(tmp_path, data, data)
    assert {op.kind for op in header.ops} == {patch.COPY}
    assert (tmp_path / "p").stat().st_size < 512  # header, digests and one op: no payload


def test_empty_target_and_empty_base(tmp_path: Path) -> None:
    roundtrip(tmp_path, b"some base", b"")
    roundtrip(tmp_path, b"", b"a target from nothing" * 100)


# -- tensor-aware path ------------------------------------------------------------------------


def gguf_file(path: Path, tensors: dict[str, np.ndarray[Any, Any]], note: str = "v1") -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.note", note)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def onnx_file(path: Path, tensors: dict[str, np.ndarray[Any, Any]], doc: str = "v1") -> None:
    import onnx
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(a, name) for name, a in tensors.items()]
    first = next(iter(tensors))
    node = helper.make_node("Identity", [first], ["y"])
    out = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "g", [], [out], initializer=inits)
    model = helper.make_model(graph, doc_string=doc)
    path.write_bytes(model.SerializeToString())


def random_tensors(rng: np.random.Generator, count: int) -> dict[str, np.ndarray[Any, Any]]:
    tensors: dict[str, np.ndarray[Any, Any]] = {}
    for i in range(count):
        # At least 40 elements (80 bytes in fp16): above the layouts' 64-byte floor, so that a
        # file left with one tensor after removals still has a layout.
        shape = (int(rng.integers(5, 40)), int(rng.integers(8, 40)))
        dtype = [np.float32, np.float16, np.int32][int(rng.integers(0, 3))]
        tensors[f"t{i}"] = (rng.standard_normal(shape) * 3).astype(dtype)
    return tensors


def edit_tensors(
    rng: np.random.Generator, tensors: dict[str, np.ndarray[Any, Any]], edits: list[str]
) -> dict[str, np.ndarray[Any, Any]]:
    out = dict(tensors)
    for edit in edits:
        names = list(out)
        name = names[int(rng.integers(0, len(names)))]
        a = out[name]
        if edit == "finetune" and a.dtype.kind == "f":
            out[name] = (a * (1 + 1e-3 * rng.standard_normal(a.shape))).astype(a.dtype)
        elif edit == "replace":
            out[name] = rng.standard_normal(a.shape).astype(a.dtype)
        elif edit == "reshape":
            out[name] = rng.standard_normal((a.shape[0] + 1, a.shape[1])).astype(a.dtype)
        elif edit == "add":
            # 80 bytes: above the layouts' 64-byte floor (smaller payloads stay with the container).
            out[f"new{len(out)}"] = rng.standard_normal((4, 5)).astype(np.float32)
        elif edit == "remove" and len(out) > 1:
            del out[name]
        elif edit == "rename":
            out[name + "_renamed"] = out.pop(name)
    return out


EDITS = st.lists(
    st.sampled_from(["finetune", "replace", "reshape", "add", "remove", "rename"]), max_size=5
)


WRITERS = {"gguf": gguf_file, "onnx": onnx_file}


@pytest.mark.parametrize("kind", sorted(WRITERS))
@FAST
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 8), edits=EDITS, meta=st.booleans())
def test_tensor_edits_round_trip(
    tmp_path: Path, kind: str, seed: int, count: int, edits: list[str], meta: bool
) -> None:
    rng = np.random.default_rng(seed)
    tensors = random_tensors(rng, count)
    base, target = tmp_path / f"a.{kind}", tmp_path / f"b.{kind}"
    WRITERS[kind](base, tensors)
    WRITERS[kind](target, edit_tensors(rng, tensors, edits), "v2" if meta else "v1")
    with target.open("rb") as f:
        assert detect(f).kind == kind
    patch.create(base, target, tmp_path / "p")
    patch.apply(base, tmp_path / "p", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == target.read_bytes()


def test_onnx_layout_finds_every_initializer_at_its_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    tensors = random_tensors(rng, 5)
    onnx_file(tmp_path / "m.onnx", tensors)
    data = (tmp_path / "m.onnx").read_bytes()
    with (tmp_path / "m.onnx").open("rb") as f:
        layout = detect(f)
    assert {t.name for t in layout.tensors} == set(tensors)
    for t in layout.tensors:
        assert data[t.offset : t.end] == tensors[t.name].tobytes()
        assert t.width == {np.dtype(np.float32): 4, np.dtype(np.float16): 2}.get(
            tensors[t.name].dtype, 1
        )


def test_safetensors_layout(tmp_path: Path) -> None:
    import json

    a = np.arange(12, dtype=np.float32)
    b = np.arange(6, dtype=np.int8)
    header = {
        "a": {"dtype": "F32", "shape": [12], "data_offsets": [0, 48]},
        "b": {"dtype": "I8", "shape": [6], "data_offsets": [48, 54]},
    }
    head = json.dumps(header).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(head)) + head + a.tobytes() + b.tobytes())
    with path.open("rb") as f:
        layout = detect(f)
    assert layout.kind == "safetensors"
    assert [(t.name, t.length, t.width) for t in layout.tensors] == [("a", 48, 4), ("b", 6, 1)]


def test_fine_tune_of_a_real_model_uses_the_float_transforms(tmp_path: Path) -> None:
    """A full fine-tune of the demo's f16 GGUF: the tensor path is much smaller than the
    whole-file delta of the same engine, and byte-identical."""
    from edged.demo import gguf_llama

    gguf_llama(tmp_path / "a.gguf", n_embd=128, n_ff=256)
    finetune(tmp_path / "a.gguf", tmp_path / "b.gguf", fraction=1.0, relative=1e-3)
    tensor = roundtrip(
        tmp_path, (tmp_path / "a.gguf").read_bytes(), (tmp_path / "b.gguf").read_bytes()
    )
    tensor_size = (tmp_path / "p").stat().st_size
    kinds = {op.kind for op in tensor.ops}
    assert kinds & {patch.XOR, patch.DIFF}, tensor.summary()
    roundtrip(
        tmp_path,
        (tmp_path / "a.gguf").read_bytes(),
        (tmp_path / "b.gguf").read_bytes(),
        tensor_aware=False,
    )
    generic_size = (tmp_path / "p").stat().st_size
    assert tensor_size < 0.7 * generic_size


# -- ONNX external data ------------------------------------------------------------------------


def external_onnx(directory: Path, tensors: dict[str, np.ndarray[Any, Any]] | None = None) -> Path:
    """An ONNX model saved with its initializers in ``model.onnx.data`` next to it: the MLP of
    the demo, or an Identity graph over ``tensors``; returns the data file."""
    import onnx

    from edged.demo import mlp_model

    directory.mkdir(parents=True, exist_ok=True)
    if tensors is None:
        mlp_model(directory / "model.onnx", (64, 256, 256, 16), seed=5)
    else:
        onnx_file(directory / "model.onnx", tensors)
    model = onnx.load(str(directory / "model.onnx"))
    onnx.save_model(
        model,
        str(directory / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    return directory / "model.onnx.data"


def test_external_data_layout_comes_from_the_model_next_to_it(tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    data_path = external_onnx(tmp_path / "m")
    data = data_path.read_bytes()
    with data_path.open("rb") as f:
        assert detect(f).kind == "raw"  # alone, the file says nothing about itself
        layout = detect(f, data_path)
    assert layout.kind == "onnx-external"
    model = onnx.load(str(tmp_path / "m" / "model.onnx"))
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert {t.name for t in layout.tensors} == set(arrays)
    for t in layout.tensors:
        assert data[t.offset : t.end] == arrays[t.name].tobytes()
        assert t.width == 4
    # Without its model the same bytes are opaque again.
    (tmp_path / "m" / "model.onnx").unlink()
    with data_path.open("rb") as f:
        assert detect(f, data_path).kind == "raw"


def test_fine_tune_of_an_external_data_model_is_tensor_aware(tmp_path: Path) -> None:
    """The data file of a fine-tuned external-data model is patched with the float transforms,
    and the applied file serves the fine-tuned model in onnxruntime."""
    import shutil

    import onnxruntime as ort

    base = external_onnx(tmp_path / "v1")
    (tmp_path / "v2").mkdir()
    shutil.copyfile(tmp_path / "v1" / "model.onnx", tmp_path / "v2" / "model.onnx")
    target = tmp_path / "v2" / "model.onnx.data"
    assert finetune(base, target, fraction=1.0, relative=1e-3) == 6

    header = patch.create(base, target, tmp_path / "p")
    assert header.layout == "onnx-external"
    assert {op.kind for op in header.ops} & {patch.XOR, patch.DIFF}, header.summary()
    generic = patch.create(base, target, tmp_path / "p-generic", tensor_aware=False)
    assert generic.layout == "onnx-external"  # the target's layout is still recorded
    assert (tmp_path / "p").stat().st_size < 0.7 * (tmp_path / "p-generic").stat().st_size

    (tmp_path / "v3").mkdir()
    shutil.copyfile(tmp_path / "v1" / "model.onnx", tmp_path / "v3" / "model.onnx")
    patch.apply(base, tmp_path / "p", tmp_path / "v3" / "model.onnx.data")
    assert (tmp_path / "v3" / "model.onnx.data").read_bytes() == target.read_bytes()

    x = {"input": np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)}

    def run(version: str) -> Any:
        path = str(tmp_path / version / "model.onnx")
        return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, x)[0]

    np.testing.assert_array_equal(run("v3"), run("v2"))
    assert not np.array_equal(run("v3"), run("v1"))


@FAST
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 6), edits=EDITS)
def test_external_data_tensor_edits_round_trip(
    tmp_path: Path, seed: int, count: int, edits: list[str]
) -> None:
    import shutil

    rng = np.random.default_rng(seed)
    tensors = random_tensors(rng, count)
    shutil.rmtree(tmp_path / "a", ignore_errors=True)
    shutil.rmtree(tmp_path / "b", ignore_errors=True)
    base = external_onnx(tmp_path / "a", tensors)
    target = external_onnx(tmp_path / "b", edit_tensors(rng, tensors, edits))
    with target.open("rb") as f:
        assert detect(f, target).kind == "onnx-external"
    patch.create(base, target, tmp_path / "p")
    patch.apply(base, tmp_path / "p", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == target.read_bytes()


# -- q8_0 blocks -------------------------------------------------------------------------------


@st.composite
def q8_0_pair(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """Base blocks, and a target re-quantized from slightly moved weights: some scales move,
    a few quants step by one, now and then a quant jumps anywhere."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(1, 300))
    base = rng.integers(0, 256, size=(n, transform.Q8_0_BLOCK), dtype=np.uint8)
    target = base.copy()
    moved = rng.random(n) < draw(st.floats(0, 1))
    scales = target[:, :2].copy().view(np.uint16).reshape(-1)
    scales[moved] += rng.integers(-3, 4, size=int(moved.sum())).astype(np.uint16)
    target[:, :2] = scales.view(np.uint8).reshape(n, 2)
    quants = target[:, 2:]
    step = rng.random(quants.shape) < draw(st.floats(0, 0.3))
    quants[step] += rng.choice(np.array([1, 255], dtype=np.uint8), size=int(step.sum()))
    jump = rng.random(quants.shape) < 0.01
    quants[jump] = rng.integers(0, 256, size=int(jump.sum()), dtype=np.uint8)
    return base.tobytes(), target.tobytes()


@pytest.mark.parametrize("kind", [transform.XOR, transform.DIFF])
@FAST
@given(pair=q8_0_pair())
def test_q8_0_block_transform_round_trips(kind: str, pair: tuple[bytes, bytes]) -> None:
    base, target = pair
    planes = transform.forward(kind, base, target, transform.Q8_0_BLOCK)
    assert len(planes) <= transform.planes_limit(len(base), transform.Q8_0_BLOCK)
    assert bytes(transform.inverse(kind, base, planes, transform.Q8_0_BLOCK)) == target


def test_q8_0_planes_that_disagree_with_their_bitmap_are_refused() -> None:
    base = bytes(range(34)) * 4
    target = bytearray(base)
    target[5] ^= 1
    planes = transform.forward(transform.DIFF, base, bytes(target), transform.Q8_0_BLOCK)
    for bad in (planes + b"\x01", planes[:-1], planes[:10]):
        with pytest.raises(ValueError, match="q8_0"):
            transform.inverse(transform.DIFF, base, bad, transform.Q8_0_BLOCK)


def test_requantized_q8_0_gguf_uses_the_block_transform(tmp_path: Path) -> None:
    """llama.cpp quantizes an f16 model to q8_0 before and after a full fine-tune: the q8_0
    tensors are found as blocks, patched through the sparse block planes, byte-identical, and
    smaller than treating them as raw bytes."""
    import ctypes

    import llama_cpp

    from edged.demo import gguf_llama

    gguf_llama(tmp_path / "a.f16", n_embd=128, n_ff=256)
    finetune(tmp_path / "a.f16", tmp_path / "b.f16", fraction=1.0, relative=1e-3)
    for name in ("a", "b"):
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
        source, out = str(tmp_path / f"{name}.f16").encode(), str(tmp_path / f"{name}.q8").encode()
        assert llama_cpp.llama_model_quantize(source, out, ctypes.byref(params)) == 0
    base, target = (tmp_path / "a.q8").read_bytes(), (tmp_path / "b.q8").read_bytes()
    with (tmp_path / "a.q8").open("rb") as f:
        widths = {t.width for t in detect(f).tensors}
    assert transform.Q8_0_BLOCK in widths
    header = roundtrip(tmp_path, base, target)
    assert any(op.width == transform.Q8_0_BLOCK for op in header.ops), header.summary()
    blocks_size = (tmp_path / "p").stat().st_size
    roundtrip(tmp_path, base, target, tensor_aware=False)
    assert blocks_size < 0.8 * (tmp_path / "p").stat().st_size


# -- refusal ----------------------------------------------------------------------------------


@pytest.fixture
def made(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    tensors = random_tensors(rng, 6)
    gguf_file(tmp_path / "base", tensors)
    gguf_file(tmp_path / "target", edit_tensors(rng, tensors, ["finetune", "finetune", "add"]))
    patch.create(tmp_path / "base", tmp_path / "target", tmp_path / "p")
    return tmp_path


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_bit_flip_is_refused_and_nothing_written(made: Path, data: st.DataObject) -> None:
    good = (made / "p").read_bytes()
    bit = data.draw(st.integers(0, len(good) * 8 - 1))
    bad = bytearray(good)
    bad[bit // 8] ^= 1 << (bit % 8)
    (made / "bad").write_bytes(bytes(bad))
    with pytest.raises(patch.PatchError):
        patch.apply(made / "base", made / "bad", made / "out")
    assert not (made / "out").exists()
    assert not [p for p in made.iterdir() if ".tmp-" in p.name]


def test_truncation_is_refused(made: Path) -> None:
    good = (made / "p").read_bytes()
    for n in (0, 7, 20, len(good) // 2, len(good) - 1):
        (made / "bad").write_bytes(good[:n])
        with pytest.raises(patch.PatchError) as err:
            patch.apply(made / "base", made / "bad", made / "out")
        assert err.value.reason in {"truncated", "corrupt", "format"}
        assert not (made / "out").exists()


def test_wrong_base_is_refused_before_writing(made: Path) -> None:
    base = (made / "base").read_bytes()
    (made / "other").write_bytes(base[:-1] + bytes([base[-1] ^ 1]))
    with pytest.raises(patch.PatchError, match="wrong base") as err:
        patch.apply(made / "other", made / "p", made / "out")
    assert err.value.reason == "wrong_base"
    assert not (made / "out").exists()
    (made / "short").write_bytes(b"tiny")
    with pytest.raises(patch.PatchError, match="wrong base"):
        patch.apply(made / "short", made / "p", made / "out")


def test_existing_output_is_untouched_when_apply_fails(made: Path) -> None:
    (made / "out").write_bytes(b"previous content")
    (made / "other").write_bytes(b"x" * (made / "base").stat().st_size)
    with pytest.raises(patch.PatchError):
        patch.apply(made / "other", made / "p", made / "out")
    assert (made / "out").read_bytes() == b"previous content"


def test_not_a_patch(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"hello world, definitely not a patch" * 3)
    with pytest.raises(patch.PatchError, match="not an edged patch"):
        patch.read_header(tmp_path / "x")


def test_planes_are_coded_near_their_order0_entropy(tmp_path: Path) -> None:
    """Byte planes of a fine-tune are nearly memoryless noise: the plane coder must spend
    little more than their order-0 entropy (zstd level 3 spends ~25% more, matching noise)."""
    from edged.demo import gguf_llama

    gguf_llama(tmp_path / "a.gguf", n_embd=256, n_ff=512)
    finetune(tmp_path / "a.gguf", tmp_path / "b.gguf", fraction=1.0, relative=1e-3)
    base, target = (tmp_path / "a.gguf").read_bytes(), (tmp_path / "b.gguf").read_bytes()
    with (tmp_path / "a.gguf").open("rb") as f:
        tensors = [t for t in detect(f).tensors if t.width == 2 and t.length >= 1 << 16]
    entropy = coded = level3 = 0.0
    for t in tensors:
        planes = transform.forward(
            transform.DIFF, base[t.offset : t.end], target[t.offset : t.end], 2
        )
        for i in range(2):
            plane = np.frombuffer(planes, np.uint8)[i * (t.length // 2) : (i + 1) * (t.length // 2)]
            counts = np.unique(plane, return_counts=True)[1]
            p = counts / counts.sum()
            entropy += float(-(p * np.log2(p)).sum()) * plane.size / 8
        coded += len(transform.compress_planes(planes))
        level3 += len(transform.compress(planes, 3))
    assert entropy > 0
    assert coded < 1.03 * entropy + 200 * len(tensors)
    assert coded < 0.9 * level3
