"""What a variant would cost to load here: its verdict says whether it may be loaded, its probe
measurement (times the accounting's correction) what it would hold, and how long it takes."""

from __future__ import annotations

from collections.abc import Callable

from edged.errors import EdgedError, ErrorCode
from edged.portfolio.budget import Accounting
from edged.portfolio.scoring import Option
from edged.portfolio.verdicts import Verdicts, VerdictState
from edged.runtime.probe import ProbeResult
from edged.store.manifest import Manifest, Variant

# Assumed for a variant that has no probe measurement yet.
UNMEASURED_LOAD_SECONDS = 1.0


def expected_bytes(variant: Variant, result: ProbeResult | None) -> int:
    """The probe's clean measurement, else what the manifest declares, else the file size."""
    if result is not None and result.memory_bytes > 0:
        return result.memory_bytes
    return variant.memory_bytes or variant.size


def declared_quality(model: str, variant: Variant) -> float:
    return variant.quality


class VariantCosts:
    def __init__(self, verdicts: Verdicts, accounting: Accounting) -> None:
        self.verdicts = verdicts
        self.accounting = accounting
        # The quality a variant is scored with: the manifest's, or (the quality monitor) what
        # labels measured on this device with the manifest's as the prior.
        self.quality_of: Callable[[str, Variant], float] = declared_quality

    def option(self, variant: Variant, model: str = "") -> Option:
        result = self.verdicts.verdict(variant).result
        return Option(
            variant.id,
            int(expected_bytes(variant, result) * self.accounting.correction),
            self.quality_of(model, variant),
            result.load_seconds if result else UNMEASURED_LOAD_SECONDS,
        )

    def floor(self, variant: Variant) -> int:
        """The least a load of ``variant`` is charged (loader.py says why)."""
        return expected_bytes(variant, self.verdicts.verdict(variant).result)

    def known(self, manifest: Manifest) -> list[tuple[Variant, Option]]:
        """Usable variants whose verdict is already known, best quality first."""
        out = [
            (variant, self.option(variant, manifest.name))
            for variant in manifest.servable
            if self.verdicts.verdict(variant).state is VerdictState.USABLE
        ]
        out.sort(key=lambda vo: (-vo[1].quality, vo[1].bytes))
        return out

    async def usable(self, manifest: Manifest) -> list[tuple[Variant, Option]]:
        """``known`` after validating every variant that never ran here; FAILED_PRECONDITION
        naming each variant's reason when none can be loaded."""
        reasons = []
        for variant in manifest.servable:
            result = await self.verdicts.validate(variant)
            if not result.usable:
                reasons.append(f"{variant.id}: {result.reason}")
        options = self.known(manifest)
        if not options:
            raise EdgedError(
                f"model {manifest.name} version {manifest.version}: no variant can be loaded ("
                + "; ".join(reasons)
                + ")",
                ErrorCode.FAILED_PRECONDITION,
            )
        return options
