"""A GGUF variant configured for embeddings serves vectors instead of text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from edged.store.store import ModelStore
from tests.daemon import DaemonProcess
from tests.e2e.test_validation import derived_model

pytestmark = pytest.mark.e2e


def test_gguf_embeddings(demo_src: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    ModelStore(root).import_dir(
        derived_model(
            demo_src / "tinyllama", tmp_path / "embed", "embedder", options={"embedding": True}
        )
    )
    daemon = DaemonProcess(root).start()
    try:
        client = triton.InferenceServerClient(url=daemon.unix_url)
        meta = client.get_model_metadata("embedder")
        assert [(t.name, t.datatype) for t in meta.outputs] == [("embedding", "FP32")]
        vectors = []
        for text in (b"hello", b"hello", b"something else entirely"):
            prompt = triton.InferInput("text_input", [1], "BYTES")
            prompt.set_data_from_numpy(np.array([text], dtype=object))
            vectors.append(client.infer("embedder", [prompt]).as_numpy("embedding"))
        client.close()
    finally:
        daemon.stop()
    assert vectors[0].shape == (64,)  # the model's n_embd
    np.testing.assert_array_equal(vectors[0], vectors[1])
    assert not np.allclose(vectors[0], vectors[2])
