"""Read-only views of the portfolio: health, readiness, metadata, the index, statistics and the
whole portfolio (``edged models``, the Prometheus collector). Every answer is a snapshot."""

from __future__ import annotations

from edged.errors import EdgedError, ErrorCode, NotFoundError
from edged.names import version_key
from edged.portfolio.portfolio import Portfolio
from edged.portfolio.slot import Slot
from edged.quality.monitor import QualityMonitor
from edged.runtime.probe import ProbeResult
from edged.serving.views import (
    BudgetView,
    IndexEntry,
    ModelMetadata,
    ModelStatistics,
    ModelView,
    PortfolioView,
    VariantView,
    VersionView,
)
from edged.store.manifest import Variant
from edged.store.versions import VersionState
from edged.tensors import TensorSpec


class Health:
    """The daemon's readiness: set once start-up has loaded what it can, cleared at shutdown."""

    def __init__(self) -> None:
        self.ready = False


class RepositoryService:
    def __init__(
        self, portfolio: Portfolio, health: Health, quality: QualityMonitor | None = None
    ) -> None:
        self.portfolio = portfolio
        self.health = health
        self.quality = quality

    # -- health ---------------------------------------------------------------------------------

    def server_ready(self) -> bool:
        return self.health.ready

    def model_ready(self, name: str, version: str) -> bool:
        slot = self.portfolio.slots.get(name)
        if slot is None or not slot.ready or slot.handle is None:
            return False
        return version in ("", slot.handle.version)

    # -- metadata -------------------------------------------------------------------------------

    async def metadata(self, name: str, version: str) -> ModelMetadata:
        slot = self.portfolio.slot(name)
        if version and version != slot.version:
            raise NotFoundError(
                f"model {name!r} version {version!r} is not served "
                f"(the active version is {slot.version!r})"
            )
        handle = slot.current()
        if handle is not None:
            runtime = handle.runtime
            platform, inputs, outputs = runtime.platform, runtime.inputs, runtime.outputs
        else:
            result = await self._signature(slot.manifest.variants)
            platform = result.platform
            inputs = tuple(TensorSpec.from_json(s) for s in result.inputs)
            outputs = tuple(TensorSpec.from_json(s) for s in result.outputs)
        versions = tuple(sorted(self.portfolio.store.versions(name), key=version_key))
        return ModelMetadata(name, versions, platform, inputs, outputs)

    async def _signature(self, variants: tuple[Variant, ...]) -> ProbeResult:
        """A model that is not resident describes itself by its first usable variant's probe."""
        reasons = []
        for variant in variants:
            result = await self.portfolio.validate(variant)
            if result.usable:
                return result
            reasons.append(f"{variant.id}: {result.reason}")
        raise EdgedError("no usable variant: " + "; ".join(reasons), ErrorCode.FAILED_PRECONDITION)

    # -- the index and statistics ---------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every stored version (read-only: nothing here loads or moves a version). A model's
        serving version comes last among its versions, with the serving state; the others say
        where they are in their lifecycle (a candidate is LOADING, the rest UNAVAILABLE)."""
        out = []
        store = self.portfolio.store
        for name, slot in sorted(self.portfolio.slots.items()):
            for version in store.versions(name):
                if version == slot.version:
                    continue
                record = store.record(name, version)
                state = "LOADING" if record.state is VersionState.CANDIDATE else "UNAVAILABLE"
                what = f"{record.state}" + (f" ({record.phase})" if record.phase else "")
                if not ready_only:
                    out.append(IndexEntry(name, version, state, f"{what}: {record.reason}"))
            if not ready_only or slot.ready:
                out.append(IndexEntry(name, slot.version, slot.state.index_state, slot.reason))
        return out

    def statistics(self, name: str = "") -> list[ModelStatistics]:
        names = [name] if name else sorted(self.portfolio.slots)
        out = []
        for model in names:
            slot = self.portfolio.slot(model)
            s = slot.stats
            handle = slot.handle
            out.append(
                ModelStatistics(
                    model,
                    handle.version if handle else slot.version,
                    s.last_inference_ms,
                    s.success_count,
                    s.success_ns,
                    s.fail_count,
                    s.fail_ns,
                    handle.load_stats.memory_bytes if handle else 0,
                )
            )
        return out

    # -- the whole portfolio --------------------------------------------------------------------

    def budget(self) -> BudgetView:
        p = self.portfolio
        reading = p.reading
        return BudgetView(
            reading.bytes,
            str(reading.limited_by),
            p.accounted(),
            reading.available,
            reading.psi_some_avg10,
        )

    def portfolio_view(self, *, refresh: bool = True, versions: bool = True) -> PortfolioView:
        """Everything ``edged models`` shows. ``versions=False`` leaves out the store's versions
        (the metrics collector needs only what is resident, and reads no files)."""
        p = self.portfolio
        if refresh:
            p.refresh()
        now = p.clock()
        models = [self._model(slot, now, versions) for _, slot in sorted(list(p.slots.items()))]
        return PortfolioView(self.budget(), tuple(models))

    def _model(self, slot: Slot, now: float, with_versions: bool) -> ModelView:
        p = self.portfolio
        handle = slot.handle
        resident = (handle.variant.id, p.bytes_of(handle)) if handle is not None else None
        versions = []
        for version in p.store.versions(slot.name) if with_versions else ():
            manifest = p.store.manifest(slot.name, version)
            variants = []
            for variant in manifest.servable:
                verdict = p.verdict(variant)
                serving = (
                    handle is not None
                    and handle.version == version
                    and handle.variant.id == variant.id
                )
                result = verdict.result
                score = (
                    self.quality.score(slot.name, version, variant.id)
                    if self.quality is not None
                    else None
                )
                measured = (
                    self.quality.measured_quality(slot.name, variant.id, variant.quality)
                    if self.quality is not None
                    else variant.quality
                )
                variants.append(
                    VariantView(
                        variant.id,
                        variant.format,
                        variant.quantization,
                        variant.quality,
                        variant.size,
                        "READY" if serving else str(verdict.state),
                        verdict.reason,
                        serving,
                        p.bytes_of(handle) if serving and handle else 0,
                        handle.load_stats.seconds
                        if serving and handle
                        else result.load_seconds
                        if result
                        else 0.0,
                        score.labels if score else 0,
                        score.accuracy if score else float("nan"),
                        score.ece if score else float("nan"),
                        measured,
                    )
                )
            versions.append(VersionView(version, version == slot.version, tuple(variants)))
        return ModelView(
            slot.name,
            slot.version,
            slot.state.index_state,
            slot.reason,
            slot.pinned,
            slot.rate.rate(now),
            -1.0 if slot.last_use is None else now - slot.last_use,
            tuple(versions),
            resident,
        )
