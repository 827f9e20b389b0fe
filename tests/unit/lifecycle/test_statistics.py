"""The lifecycle's statistics on known inputs."""

from __future__ import annotations

import numpy as np
import pytest

from edged.lifecycle.statistics import (
    AgreementTest,
    Outcome,
    ks_critical,
    ks_statistic,
    percentiles,
    psi,
)


def test_the_sequential_test_passes_steady_agreement_and_fails_a_few_disagreements() -> None:
    good = AgreementTest(good=0.99, bad=0.95, min_samples=20)
    for _ in range(19):
        good.observe(True)
    assert good.outcome is Outcome.UNDECIDED  # never before the minimum sample
    while good.outcome is Outcome.UNDECIDED:
        good.observe(True)
    assert good.outcome is Outcome.PASS
    assert 60 <= good.samples <= 80  # log(0.05/0.95) / log(0.95/0.99) ~ 72

    bad = AgreementTest(good=0.99, bad=0.95, min_samples=20)
    for i in range(20):
        bad.observe(i % 5 != 0)  # 80% agreement
    assert bad.outcome is Outcome.FAIL


def test_the_sequential_test_errs_at_about_its_rates() -> None:
    """At exactly the bad rate it fails most of the time; at the good rate it passes."""
    rng = np.random.default_rng(1)

    def run(p: float) -> Outcome:
        test = AgreementTest(good=0.99, bad=0.95, min_samples=30)
        while test.outcome is Outcome.UNDECIDED and test.samples < 5000:
            test.observe(bool(rng.random() < p))
        return test.outcome

    passes_at_good = sum(run(0.99) is Outcome.PASS for _ in range(200))
    fails_at_bad = sum(run(0.95) is Outcome.FAIL for _ in range(200))
    assert passes_at_good >= 180 and fails_at_bad >= 180


def test_percentiles_are_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentiles(values) == (50, 95, 99)
    assert percentiles([3.0]) == (3.0, 3.0, 3.0)


def test_drift_measures_see_a_shift_and_not_a_resample() -> None:
    rng = np.random.default_rng(2)
    reference = rng.beta(8, 2, 400)
    same = rng.beta(8, 2, 200)
    shifted = rng.beta(2, 8, 200)
    assert psi(reference, same) < 0.1
    assert psi(reference, shifted) > 1.0
    assert ks_statistic(reference, same) < ks_critical(400, 200)
    assert ks_statistic(reference, shifted) > ks_critical(400, 200)
    assert ks_statistic([0.0, 1.0], [0.0, 1.0]) == 0.0
    assert ks_critical(100, 100, 0.01) == pytest.approx(0.2302, abs=1e-3)


def test_probation_rolls_back_on_labels_that_say_the_new_version_is_worse() -> None:
    import asyncio

    from edged.lifecycle.probation import Probation
    from edged.quality.labels import Score
    from edged.settings import LifecycleSettings

    def score(correct: int, labels: int) -> Score:
        s = Score()
        for i in range(labels):
            s.add(0.9, i < correct)
        return s

    async def verdict(new: Score, old: Score) -> Outcome:
        watch = Probation(
            None,  # type: ignore[arg-type]  (the handle is not looked at here)
            {},
            [],
            None,
            (),
            LifecycleSettings(probation_seconds=3600),
            labels=lambda: (new, old),
        )
        return watch.verdict().outcome

    assert asyncio.run(verdict(score(80, 100), score(97, 100))) is Outcome.FAIL
    assert asyncio.run(verdict(score(95, 100), score(97, 100))) is Outcome.UNDECIDED
    assert asyncio.run(verdict(score(10, 20), score(97, 100))) is Outcome.UNDECIDED  # too few
