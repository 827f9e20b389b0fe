"""Quality through the real daemon: the digits cascade answered and labelled through the CLI
(`edged trace digits`), what `edged models`, `edged quality` and the metrics then show, a label
for an unknown id, and the confidence of generated text from llama.cpp's token probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from tests.conftest import import_demo
from tests.daemon import DaemonProcess, free_port, scrape, wait_for

pytestmark = pytest.mark.e2e


def test_labels_cascade_and_confidence_through_the_daemon(tmp_path: Path, demo_src: Path) -> None:
    root = import_demo(tmp_path / "store", demo_src)
    port = free_port()
    daemon = DaemonProcess(root, metrics__address=f"127.0.0.1:{port}").start()
    try:
        replay = daemon.edged(
            "trace",
            "digits",
            "--heldout",
            str(demo_src / "digits" / "heldout.npz"),
            "--count",
            "300",
            "--delay",
            "0.2",
        )
        assert replay.returncode == 0, replay.stderr
        assert "300 held-out digits sent" in replay.stdout
        assert "answered by: student-int8" in replay.stdout, replay.stdout
        accuracy = float(replay.stdout.split("accuracy ")[1].split("%")[0]) / 100
        assert accuracy > 0.95

        report = daemon.edged("quality", "digits")
        assert report.returncode == 0, report.stderr
        assert "cascade: student-int8 -> teacher-fp32" in report.stdout
        assert "cascade/student-int8" in report.stdout

        models = daemon.edged("models")
        assert "cascade" in models.stdout and "labels (ECE" in models.stdout, models.stdout

        unknown = daemon.edged("label", "digits", "never-sent", "3")
        assert unknown.returncode == 1
        assert "NOT_FOUND" in unknown.stderr and "unknown, expired" in unknown.stderr

        client = triton.InferenceServerClient(url=daemon.unix_url)
        prompt = triton.InferInput("text_input", [1], "BYTES")
        prompt.set_data_from_numpy(np.array([b"hello"], dtype=object))
        client.infer("tinyllama", [prompt], parameters={"max_tokens": 8})
        client.close()

        def gguf_confidences() -> float:
            values = scrape(port)
            return sum(
                v
                for k, v in values.items()
                if k.startswith("edged_confidence_count{") and 'model="tinyllama"' in k
            )

        # Scored off the request path (within ~50 ms).
        wait_for(lambda: gguf_confidences() >= 1, 10, "the confidence of generated text")
        values = scrape(port)
        assert any(
            k.startswith("edged_label_accuracy{") and "cascade/student-int8" in k and v > 0.9
            for k, v in values.items()
        ), [k for k in values if "label" in k]
        cascade = sum(v for k, v in values.items() if k.startswith("edged_cascade_answers_total{"))
        assert cascade >= 300
        for measure in ("margin", "entropy"):  # of the class scores; generated text has none
            counts = {
                k: v for k, v in values.items() if k.startswith(f"edged_confidence_{measure}_count")
            }
            assert sum(v for k, v in counts.items() if 'model="digits"' in k) >= 300, counts
            assert not any('model="tinyllama"' in k for k in counts), counts
    finally:
        daemon.stop()
