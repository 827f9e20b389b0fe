"""Quality on the digits demo (real labelled data): the cascade, delayed labels, strata."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from edged.errors import NotFoundError
from edged.events import NoEvents
from edged.quality.monitor import QualityMonitor
from edged.serving.inference import InferenceService
from edged.serving.quality import QualityService
from edged.store.store import ModelStore
from edged.tensors import GenerationParams
from tests.portfolios import DeclaredProber, make_settings, open_portfolio, quiet_system

PARAMS = GenerationParams()


class Cascading(NoEvents):
    def __init__(self) -> None:
        self.escalations: list[bool] = []

    def escalated(self, model: str, escalated: bool, saved: float) -> None:
        self.escalations.append(escalated)


def test_the_cascade_keeps_the_teachers_accuracy_while_the_teacher_answers_a_minority(
    tmp_path: Path, demo_src: Path
) -> None:
    store = ModelStore(tmp_path / "store")
    store.import_dir(demo_src / "digits")
    manifest = store.manifest("digits", "1")
    teacher = manifest.variant("teacher-fp32").quality
    heldout = np.load(demo_src / "digits" / "heldout.npz")
    events = Cascading()
    settings = make_settings()
    portfolio = open_portfolio(
        store, tmp_path, settings, prober=DeclaredProber(), system=quiet_system(tmp_path)
    )
    monitor = QualityMonitor(settings.quality, tmp_path / "quality", events)
    inference = InferenceService(portfolio, events, 2, monitor)
    quality = QualityService(portfolio, monitor)
    answered: list[tuple[str, bool]] = []

    async def run() -> None:
        try:
            await portfolio.load("digits")
            handle = portfolio.slot("digits").handle
            assert handle is not None and handle.variant.id == "cascade"
            for i, (x, y) in enumerate(zip(heldout["x"], heldout["y"], strict=True)):
                served = await inference.infer(
                    "digits", "", {"input": x[None, :]}, [], PARAMS, None, f"r{i}"
                )
                answered.append((served.variant, bool(served.escalated)))
                quality.label("digits", f"r{i}", [int(y)])
        finally:
            inference.close()
            await portfolio.close()
            portfolio.journal.close()

    asyncio.run(run())
    accuracy = monitor.score("digits").accuracy
    by_teacher = sum(v == "teacher-fp32" for v, _ in answered) / len(answered)
    assert by_teacher == pytest.approx(np.mean(events.escalations))
    assert by_teacher < 0.5, by_teacher  # the teacher answers a minority
    assert accuracy >= teacher - 0.005, (accuracy, teacher)  # within half a point
    print(
        f"cascade accuracy {accuracy:.4f} (teacher alone {teacher:.4f}), teacher {by_teacher:.1%}"
    )


def test_labels_move_accuracy_and_calibration_and_unknown_ids_are_refused(tmp_path: Path) -> None:
    from tests.versions import version_dir

    store = ModelStore(tmp_path / "store")
    store.import_dir(version_dir(tmp_path / "src", "m", "1"))
    settings = make_settings(quality={"label_retention_seconds": 60})
    portfolio = open_portfolio(store, tmp_path, settings, prober=DeclaredProber())
    now = [1000.0]
    monitor = QualityMonitor(settings.quality, tmp_path / "q", NoEvents(), clock=lambda: now[0])
    inference = InferenceService(portfolio, NoEvents(), 2, monitor)
    quality = QualityService(portfolio, monitor)
    rng = np.random.default_rng(3)

    async def run() -> list[int]:
        predicted = []
        try:
            for i in range(40):
                x = {"input": rng.standard_normal((1, 32)).astype(np.float32)}
                served = await inference.infer("m", "", x, [], PARAMS, None, f"id{i}")
                predicted.append(int(served.outputs[0][1].argmax()))
        finally:
            inference.close()
            await portfolio.close()
            portfolio.journal.close()
        return predicted

    predicted = asyncio.run(run())
    # Half right, half wrong: accuracy 50%, and a gap between confidence and accuracy.
    for i, p in enumerate(predicted):
        quality.label("m", f"id{i}", [p if i % 2 == 0 else (p + 1) % 10])
    score = monitor.score("m", "1", "fp32")
    assert score.labels == 40 and score.accuracy == 0.5
    assert 0.0 < score.ece < 1.0
    assert monitor.measured_quality("m", "fp32", 1.0) == pytest.approx((50 + 20) / 90)
    with pytest.raises(NotFoundError, match="unknown, expired"):
        quality.label("m", "id0", [1])  # labelled already
    with pytest.raises(NotFoundError, match="no request with id 'nope'"):
        quality.label("m", "nope", [1])
    monitor.save()
    again = QualityMonitor(settings.quality, tmp_path / "q", NoEvents())
    assert again.score("m", "1", "fp32").labels == 40  # persisted
