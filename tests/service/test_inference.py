"""A request layout checked once against a handle skips the signature check on that handle only:
a new handle (another version or variant, possibly another signature) checks it again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from edged.errors import InvalidInputError
from edged.events import NoEvents
from edged.serving.inference import InferenceService
from edged.store.store import ModelStore
from edged.tensors import GenerationParams
from tests.portfolios import mlp_family, open_portfolio

PARAMS = GenerationParams(max_tokens=16, temperature=0.0)


def test_a_new_handle_checks_a_known_layout_again(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.import_dir(mlp_family(tmp_path / "src", "m", (16, 32, 4), seed=1))
    portfolio = open_portfolio(store, tmp_path)
    dataplane = InferenceService(portfolio, NoEvents(), workers=2)
    layout = object()  # what wire.py passes: one object per request layout
    good = {"input": np.ones((2, 16), np.float32)}
    bad = {"input": np.ones((2, 15), np.float32)}

    async def run() -> None:
        try:
            served = await dataplane.infer("m", "", good, [], PARAMS, layout)
            handle = portfolio.slot("m").handle
            assert handle is not None
            assert handle.checked_layout is layout and served.outputs[0][1].shape == (2, 4)
            with pytest.raises(InvalidInputError, match="shape"):
                await dataplane.infer("m", "", bad, [], PARAMS, None)  # no layout: checked
            await portfolio.unload("m")
            # The same layout object on a fresh handle: checked, and refused.
            with pytest.raises(InvalidInputError, match=r"input tensor 'input': shape \[2, 15\]"):
                await dataplane.infer("m", "", bad, [], PARAMS, layout)
        finally:
            dataplane.close()
            await portfolio.close()
            portfolio.journal.close()

    asyncio.run(run())


def test_large_requests_in_flight_are_bounded_and_counted_against_the_budget(
    tmp_path: Path,
) -> None:
    """Issue 17: ten concurrent 64 MiB requests once held 1.1 GB nobody accounted for. Large
    requests' bytes are now admitted up to server.max_inflight_bytes (RESOURCE_EXHAUSTED past
    it) and held as a reservation against the memory budget until they are answered."""
    from edged.errors import EdgedError, ErrorCode
    from tests.portfolios import make_settings

    store = ModelStore(tmp_path / "store")
    store.import_dir(mlp_family(tmp_path / "src", "m", (16, 32, 4), seed=1))
    config = make_settings(server={"max_inflight_bytes": "8MiB"})
    portfolio = open_portfolio(store, tmp_path, config)
    dataplane = InferenceService(portfolio, NoEvents(), workers=2)
    free = portfolio.free()
    dataplane.admit_bytes(6 * 2**20)
    assert portfolio.free() == free - 6 * 2**20
    with pytest.raises(EdgedError) as err:
        dataplane.admit_bytes(3 * 2**20)
    assert err.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert "server.max_inflight_bytes" in err.value.message
    dataplane.admit_bytes(2 * 2**20)
    dataplane.release_bytes(6 * 2**20)
    dataplane.release_bytes(2 * 2**20)
    assert portfolio.free() == free and dataplane.inflight_bytes == 0
    dataplane.close()
