from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from edged.errors import EdgedError, ErrorCode, ManifestError
from edged.names import check_name
from edged.store import atomic
from edged.store.store import ModelStore
from tests.conftest import read_manifest, write_manifest


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_import_is_content_addressed_and_activates(tmp_path: Path, model_dir: Path) -> None:
    store = ModelStore(tmp_path / "store")
    manifest = store.import_dir(model_dir)
    assert store.models() == ["mlp"]
    assert store.active("mlp") == "1"
    for variant in manifest.variants:
        blob = store.variant_path(variant)
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == variant.sha256
        assert blob.read_bytes() == (model_dir / variant.file).read_bytes()
    assert store.manifest("mlp", "1").raw == read_manifest(model_dir)


def test_reimport_is_idempotent_and_versions_are_immutable(tmp_path: Path, model_dir: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.import_dir(model_dir)
    before = snapshot(store.root)
    store.import_dir(model_dir)
    assert snapshot(store.root) == before
    manifest = read_manifest(model_dir)
    manifest["created"] = "2030-01-01T00:00:00Z"
    write_manifest(model_dir, manifest)
    with pytest.raises(EdgedError) as err:
        store.import_dir(model_dir)
    assert err.value.code is ErrorCode.ALREADY_EXISTS
    assert snapshot(store.root) == before


def test_second_version_shares_unchanged_blobs(tmp_path: Path, model_dir: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.import_dir(model_dir)
    blobs = set(os.listdir(store.blobs))
    manifest = read_manifest(model_dir)
    manifest["version"] = "2"
    write_manifest(model_dir, manifest)
    store.import_dir(model_dir, activate=False)
    assert set(os.listdir(store.blobs)) == blobs
    assert store.versions("mlp") == ["1", "2"]
    assert store.active("mlp") == "1"
    store.set_active("mlp", "2")
    assert store.active("mlp") == "2"


def _corrupt_hash(d: Path, m: dict) -> None:  # type: ignore[type-arg]
    m["variants"][0]["sha256"] = "0" * 64


def _corrupt_size(d: Path, m: dict) -> None:  # type: ignore[type-arg]
    m["variants"][0]["size"] += 1


def _missing_file(d: Path, m: dict) -> None:  # type: ignore[type-arg]
    (d / m["variants"][1]["file"]).unlink()


def _unknown_format(d: Path, m: dict) -> None:  # type: ignore[type-arg]
    m["variants"][1]["format"] = "tflite"


def _bad_name(d: Path, m: dict) -> None:  # type: ignore[type-arg]
    m["name"] = "../etc"


def _uppercase_name(d: Path, m: dict) -> None:  # type: ignore[type-arg]
    m["name"] = "MLP"


def _path_traversal(d: Path, m: dict) -> None:  # type: ignore[type-arg]
    m["variants"][0]["file"] = "../outside.onnx"


def _absolute_path(d: Path, m: dict) -> None:  # type: ignore[type-arg]
    m["variants"][0]["file"] = "/etc/passwd"


def _symlink_escape(d: Path, m: dict) -> None:  # type: ignore[type-arg]
    outside = d.parent / "outside.bin"
    outside.write_bytes(b"secret")
    (d / "link.onnx").symlink_to(outside)
    m["variants"][0].update(file="link.onnx", size=6, sha256=hashlib.sha256(b"secret").hexdigest())


def _external_data(d: Path, m: dict) -> None:  # type: ignore[type-arg]
    import onnx

    variant = m["variants"][0]
    model = onnx.load(str(d / variant["file"]))
    onnx.save_model(model, str(d / "ext.onnx"), save_as_external_data=True, size_threshold=0)
    data = (d / "ext.onnx").read_bytes()
    variant.update(file="ext.onnx", size=len(data), sha256=hashlib.sha256(data).hexdigest())


def _bad_quality(d: Path, m: dict) -> None:  # type: ignore[type-arg]
    m["variants"][0]["quality"] = 1.5


def _duplicate_variant(d: Path, m: dict) -> None:  # type: ignore[type-arg]
    m["variants"][1]["id"] = m["variants"][0]["id"]


def _schema(d: Path, m: dict) -> None:  # type: ignore[type-arg]
    m["schema"] = 99


def _no_variants(d: Path, m: dict) -> None:  # type: ignore[type-arg]
    m["variants"] = []


REFUSALS = {
    "wrong hash": (_corrupt_hash, "sha256"),
    "wrong size": (_corrupt_size, "size"),
    "missing file": (_missing_file, "does not exist"),
    "unknown format": (_unknown_format, "unknown format 'tflite'"),
    "bad name": (_bad_name, "not a valid name"),
    "uppercase name": (_uppercase_name, "not a valid name"),
    "path leaving the directory": (_path_traversal, "leaves the manifest's directory"),
    "absolute path": (_absolute_path, "leaves the manifest's directory"),
    "symlink leaving the directory": (_symlink_escape, "leaves the manifest's directory"),
    "quality out of range": (_bad_quality, "quality"),
    "onnx with external data": (_external_data, "keeps its weights in external data files"),
    "duplicate variant": (_duplicate_variant, "duplicate variant id"),
    "unknown schema": (_schema, "schema"),
    "no variants": (_no_variants, "at least one variant"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_manifest_leaves_store_unchanged(
    tmp_path: Path, model_dir: Path, case: str
) -> None:
    store = ModelStore(tmp_path / "store")
    before = snapshot(store.root)
    corrupt, message = REFUSALS[case]
    manifest = read_manifest(model_dir)
    corrupt(model_dir, manifest)
    write_manifest(model_dir, manifest)
    with pytest.raises(ManifestError) as err:
        store.import_dir(model_dir)
    assert message in err.value.message
    assert snapshot(store.root) == before
    assert store.models() == []


def test_hash_mismatch_on_a_later_variant_leaves_no_blob(tmp_path: Path, model_dir: Path) -> None:
    store = ModelStore(tmp_path / "store")
    manifest = read_manifest(model_dir)
    manifest["variants"][1]["sha256"] = "f" * 64
    write_manifest(model_dir, manifest)
    with pytest.raises(ManifestError, match=r"variants\[int8\]\.sha256"):
        store.import_dir(model_dir)
    assert list(store.blobs.iterdir()) == []
    assert list(store.tmp.iterdir()) == []


def test_not_json_and_missing_manifest(tmp_path: Path, model_dir: Path) -> None:
    store = ModelStore(tmp_path / "store")
    (model_dir / "manifest.json").write_text("{nope")
    with pytest.raises(ManifestError, match="not valid JSON"):
        store.import_dir(model_dir)
    (model_dir / "manifest.json").unlink()
    with pytest.raises(ManifestError, match="no manifest"):
        store.import_dir(model_dir)


def test_recover_removes_staging_leftovers(tmp_path: Path, model_dir: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.import_dir(model_dir)
    (store.tmp / "import-deadbeef").write_bytes(b"partial")
    (store.models_dir / "mlp" / ".ACTIVE.tmp-123").write_text("2")
    assert store.recover() == 2
    assert list(store.tmp.iterdir()) == []
    assert store.active("mlp") == "1"


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "pointer"
    atomic.write_text(target, "1\n")
    atomic.write_text(target, "2\n")
    assert target.read_text() == "2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pointer"]


@pytest.mark.parametrize("name", ["mlp", "ocr-rec", "a", "x.y_z-1", "9" * 64])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", ".x", "A", "a/b", "a" * 65, "ü", "a b", ".."])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ManifestError):
        check_name(name)
