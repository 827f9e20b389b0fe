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
from edged.store.versions import VersionRecord, VersionState
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


def digits_version(src: Path, out: Path, version: str, variant: str) -> Path:
    """A version of a "digits" model with one variant of the demo's (teacher or student)."""
    import json
    import shutil

    directory = out / f"digits-{version}"
    directory.mkdir(parents=True)
    manifest = json.loads((src / "manifest.json").read_text())
    chosen = next(v for v in manifest["variants"] if v["id"] == variant)
    shutil.copy(src / chosen["file"], directory / chosen["file"])
    manifest.update(version=version, variants=[chosen])
    manifest.pop("cascade", None)
    manifest["lineage"]["parent"] = None if version == "1" else "1"
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


@pytest.mark.parametrize("stratified", [True, False])
def test_a_tail_regression_is_caught_by_the_stratified_canary_and_missed_by_a_uniform_one(
    tmp_path: Path, demo_src: Path, stratified: bool
) -> None:
    """Version 2 is the distilled student: it agrees with the teacher (version 1) on 98.6% of
    the held-out digits but on only ~88% of the hardest 10%. A canary of the same share, in the
    same window: stratified (the hard stratum sampled 5x, tested on its own) takes it back; the
    conventional one (uniform, one test) passes it."""
    state, record, active = promote_the_student(
        tmp_path,
        demo_src,
        {
            "shadow_share": 0.5,
            "shadow_stratified": False,
            "shadow_agreement": 0.9,
            "shadow_min_samples": 20,
            "shadow_max_seconds": 5,
            "canary_share": 0.2,
            "canary_hard_factor": 5.0,
            "canary_stratified": stratified,
            "canary_min_samples": 30,
            "canary_max_seconds": 60,
        },
    )
    if stratified:
        assert state is VersionState.ROLLED_BACK, record
        assert record.reason.startswith("canary: stratum 0:"), record.reason
        assert record.figures["canary_agreement_0"] < 0.95
        assert active == "1"
    else:
        assert state is VersionState.COMMITTED, record
        assert record.figures["canary_agreement_all"] >= 0.95


@pytest.mark.parametrize("stratified", [True, False])
def test_the_shadow_judges_every_stratum_and_a_candidate_passes_only_if_all_pass(
    tmp_path: Path, demo_src: Path, stratified: bool
) -> None:
    """The same student in the shadow (answers thrown away): per stratum, with the hardest
    mirrored 5x as often, it is rejected on stratum 0; judged over everything it passes."""
    state, record, active = promote_the_student(
        tmp_path,
        demo_src,
        {
            "shadow_share": 0.3,
            "shadow_stratified": stratified,
            "shadow_hard_factor": 3.0,
            "shadow_agreement": 0.95,
            "shadow_min_samples": 30,
            "shadow_max_seconds": 60,
        },
    )
    assert active == ("1" if stratified else "2")
    if stratified:
        assert state is VersionState.REJECTED, record
        assert "stratum 0:" in record.reason and "(fail)" in record.reason, record.reason
        assert record.figures["shadow_agreement_0"] < 0.95
        assert record.figures["shadow_samples_3"] > 0  # every stratum was tested
    else:
        assert state is VersionState.COMMITTED, record
        assert record.figures["shadow_agreement"] >= 0.95
        assert "shadow_agreement_0" not in record.figures


def test_delayed_labels_take_back_a_candidate_that_agreement_has_not_judged_yet(
    tmp_path: Path, demo_src: Path
) -> None:
    """The application labels every answer. In the hardest stratum (by the serving version's
    confidence) the teacher is right on ~81% of the digits and the student on ~72%: with the
    canary's agreement tests kept from deciding, the labels of the stratum alone take the student
    back — compared stratum by stratum, since the canary gives it most of the hard requests."""
    state, record, active = promote_the_student(
        tmp_path,
        demo_src,
        {
            "shadow_share": 0.01,
            "shadow_max_seconds": 0.1,
            "canary_share": 0.2,
            "canary_hard_factor": 5.0,
            "canary_min_samples": 1_000_000,  # agreement never decides here
            "canary_max_seconds": 90,
        },
        labels_first=300,
    )
    assert state is VersionState.ROLLED_BACK, record
    assert record.reason.startswith("canary: labels, stratum 0: accuracy"), record.reason
    assert active == "1"


def promote_the_student(
    tmp_path: Path, demo_src: Path, lifecycle: dict[str, object], labels_first: int = 0
) -> tuple[VersionState, VersionRecord, str | None]:
    """Serve the digits teacher as version 1 under held-out traffic until the strata are
    learned, then promote the student as version 2: (its end state, record, the active one).
    With ``labels_first``, every request carries an id and is labelled at once with its digit,
    and the promotion starts when version 1 has that many labels in the hardest stratum."""
    from edged.lifecycle.manager import Lifecycle

    store = ModelStore(tmp_path / "store")
    src = demo_src / "digits"
    store.import_dir(digits_version(src, tmp_path / "src", "1", "teacher-fp32"))
    store.import_dir(digits_version(src, tmp_path / "src", "2", "student-fp32"), activate=False)
    heldout = np.load(src / "heldout.npz")
    settings = make_settings(
        lifecycle={
            "gate_min_samples": 10,
            "probation_seconds": 1,
            "probation_requests": 20,
            **lifecycle,
        }
    )
    portfolio = open_portfolio(
        store, tmp_path, settings, prober=DeclaredProber(), system=quiet_system(tmp_path)
    )
    monitor = QualityMonitor(settings.quality, None, NoEvents())
    inference = InferenceService(portfolio, NoEvents(), 2, monitor)
    manager = Lifecycle(portfolio, store, settings, NoEvents(), quality=monitor)
    stop = asyncio.Event()

    async def traffic() -> None:
        rng = np.random.default_rng(5)
        sent = 0
        while not stop.is_set():
            i = rng.integers(len(heldout["x"]))
            x = {"input": heldout["x"][i][None, :]}
            request_id = f"r{sent}" if labels_first else ""
            await inference.infer("digits", "", x, [], PARAMS, None, request_id)
            if labels_first:
                monitor.label("digits", request_id, [int(heldout["y"][i])])
            sent += 1
            await asyncio.sleep(0.001)

    def ready() -> bool:
        strata = monitor.strata.get("digits")
        if strata is None or not strata.edges:  # learned from version 1's answers
            return False
        return monitor.book.total("digits", "1", stratum=0).labels >= labels_first

    async def run() -> VersionState:
        load = asyncio.ensure_future(traffic())
        try:
            while not ready():
                await asyncio.sleep(0.05)
            manager.activate("digits", "2")
            task = manager.running("digits")
            assert task is not None
            return (await asyncio.wait_for(task, 120)).state
        finally:
            stop.set()
            await load
            await manager.close()
            inference.close()
            await portfolio.close()
            portfolio.journal.close()

    state = asyncio.run(run())
    return state, store.record("digits", "2"), store.active("digits")
