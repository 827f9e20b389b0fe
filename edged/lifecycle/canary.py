"""The stratified canary: a candidate answers a share of real requests (its answers are the ones
returned), sampled more often in the hardest stratum, and its disagreement with the serving
version is tested per stratum (docs/quality.md).

Each request's stratum is the serving version's confidence on it, so the serving version runs
first; a sampled request is then answered by the candidate too, and the candidate's answer is
returned. The hardest stratum (the bottom 10% of this device's confidence by default) is sampled
``hard_factor`` times more often, so the tail — where a distilled or quantized student is worse
than its teacher — is evaluated within the window instead of being diluted in the bulk. With
``stratified`` off it is the conventional canary: one test over all sampled requests, sampled
uniformly.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor

from edged.lifecycle.statistics import Outcome, less_accurate
from edged.lifecycle.stratified import ALL, HARDEST, PerStratum
from edged.portfolio.slot import Handle
from edged.quality.compare import confidence, requests_agree
from edged.quality.labels import Score
from edged.store.lineage import OutputKind
from edged.tensors import Array


class Canary:
    def __init__(
        self,
        candidate: Handle,
        kinds: Mapping[str, OutputKind],
        stratum_of: Callable[[Sequence[float]], int],
        strata: int,
        *,
        share: float,
        hard_factor: float,
        stratified: bool,
        good: float,
        min_samples: int,
        pool: Executor,
        rng: random.Random | None = None,
        labels: Callable[[int], tuple[Score, Score]] | None = None,
    ) -> None:
        self.candidate = candidate
        # Per stratum (ALL: everything), the candidate's and the serving version's labelled
        # answers: delayed labels that came in meanwhile judge the candidate too.
        self.labels = labels
        self.label_failure = ""
        self.kinds = dict(kinds)
        self.stratum_of = stratum_of
        self.share = share
        self.tests = PerStratum(
            strata,
            stratified=stratified,
            good=good,
            bad=max(good - 0.04, 0.5),
            min_samples=min_samples,
        )
        self.stratified = self.tests.stratified
        self.hard_factor = hard_factor if self.stratified else 1.0
        self.pool = pool
        self._random = (rng or random.Random()).random
        self.requests = 0  # requests seen
        self.answered = 0  # of them answered by the candidate

    async def route(
        self, inputs: Mapping[str, Array], served: Mapping[str, Array]
    ) -> tuple[dict[str, Array], int] | None:
        """On the request path, after the serving version answered: the candidate's answer for
        a sampled request (to return instead) and the request's stratum, else None."""
        self.requests += 1
        stratum = self.stratum_of(confidence(self.kinds, served))
        if self.stratified and stratum == ALL:
            return None  # the strata are not learned yet: nothing to sample by
        share = self.share * (self.hard_factor if stratum == HARDEST else 1.0)
        if self._random() >= min(share, 1.0):
            return None
        self.candidate.acquire()
        try:
            answer = await asyncio.get_running_loop().run_in_executor(
                self.pool, self.candidate.runtime.infer, inputs
            )
        except Exception:
            return None  # the serving version's answer stands; probation would see errors
        finally:
            self.candidate.release()
        self.answered += 1
        self.tests.observe(stratum, requests_agree(self.kinds, served, answer))
        return answer, stratum

    def outcome(self) -> Outcome:
        """FAIL when a stratum's agreement fails, or its labels say the candidate is less
        accurate than the serving version (compared stratum by stratum: the candidate answers
        more of the hard stratum, so a comparison over all would be biased against it)."""
        if self.labels is not None and not self.label_failure:
            for key in self.tests.tests:
                new, old = self.labels(key)
                if less_accurate(new.correct, new.labels, old.correct, old.labels):
                    label = "all" if key == ALL else f"stratum {key}"
                    self.label_failure = (
                        f"labels, {label}: accuracy {new.accuracy:.1%} on {new.labels} labelled "
                        f"answers against {old.accuracy:.1%} on {old.labels} for the serving "
                        "version"
                    )
                    break
        return Outcome.FAIL if self.label_failure else self.tests.outcome()

    def describe(self) -> str:
        return (
            f"{self.label_failure}; {self.tests.describe()}"
            if self.label_failure
            else (self.tests.describe())
        )

    def figures(self) -> dict[str, float]:
        out = {"canary_requests": float(self.requests), "canary_answered": float(self.answered)}
        out.update(self.tests.figures("canary"))
        return out
