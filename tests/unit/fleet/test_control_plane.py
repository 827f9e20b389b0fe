"""The fleet's pure parts: desired states, reports, waves, the abort rule, artifact manifests."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from edged.errors import EdgedError
from edged.fleet import artifact as art
from edged.fleet import state as st
from edged.fleet.rollout import AbortRule, parse_waves, plan_waves


def test_desired_state_parses_and_merges_groups_then_device() -> None:
    group = st.parse_desired(
        b'{"models": {"ocr": {"channel": "stable"}, "asr": {"version": "2"}}}', "g"
    )
    device = st.parse_desired(b'{"models": {"ocr": {"version": "7", "activate": "staged"}}}', "d")
    merged = st.merge([group, device])
    assert merged["asr"] == st.Target(version="2")
    assert merged["ocr"] == st.Target(version="7", activate=False)
    assert merged["ocr"].reference == "v7" and merged["asr"].reference == "v2"
    assert st.parse_desired(b"", "cleared") == {}
    round_trip = st.parse_desired(st.desired_payload(merged), "again")
    assert round_trip == merged


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b"{", "not JSON"),
        (b"[]", '"models"'),
        (b'{"models": {"../x": {"version": "1"}}}', "not a valid name"),
        (b'{"models": {"m": {}}}', "a version or a channel"),
        (b'{"models": {"m": {"version": "1", "channel": "s"}}}', "a version or a channel"),
        (b'{"models": {"m": {"version": "1/../2"}}}', "not a valid version"),
        (b'{"models": {"m": {"channel": "-x"}}}', "is not a tag"),
        (b'{"models": {"m": {"version": "1", "activate": "now"}}}', "activate"),
        (b'{"models": {"m": 3}}', "expected an object"),
        (b"x" * (st.MAX_MESSAGE_BYTES + 1), "larger than"),
    ],
)
def test_bad_desired_states_name_what_is_wrong(payload: bytes, says: str) -> None:
    with pytest.raises(st.DesiredStateError, match=says) as err:
        st.parse_desired(payload, "edged/v1/desired/group/g")
    assert "edged/v1/desired/group/g" in err.value.message


@given(hs.binary(max_size=300))
def test_any_payload_parses_or_is_refused_cleanly(payload: bytes) -> None:
    """Garbage from the broker never raises anything but a DesiredStateError naming the topic."""
    try:
        targets = st.parse_desired(payload, "edged/v1/desired/device/n1")
    except st.DesiredStateError as e:
        assert e.message.startswith("edged/v1/desired/device/n1")
    else:
        assert all(isinstance(t, st.Target) and (t.version or t.channel) for t in targets.values())
    report = st.parse_report(payload)
    assert report is None or isinstance(report, st.Report)


def test_outcomes_from_reports() -> None:
    report = st.ModelReport("2", {"1": "committed", "2": "committed"}, target="2")
    assert report.outcome("2") == "committed"
    assert st.ModelReport("2", {"2": "probation"}).outcome("2") == "pending"
    assert st.ModelReport("1", {"1": "committed", "3": "rolled_back"}).outcome("3") == "rolled_back"
    refused = st.ModelReport("1", {"1": "committed"}, target="3", error="untrusted key")
    assert refused.outcome("3") == "refused"
    document = st.Report("n1", ("g",), 1.0, {"m": report}).to_json()
    assert st.parse_report(json.dumps(document).encode()) == st.Report(
        "n1", ("g",), 1.0, {"m": report}
    )


def test_waves_grow_cover_everyone_once_and_do_not_depend_on_input_order() -> None:
    devices = [f"n{i}" for i in range(1000)]
    waves = plan_waves(devices, parse_waves("1%,10%,50%,100%"))
    assert [len(w) for w in waves] == [10, 90, 400, 500]
    assert sorted(d for w in waves for d in w) == sorted(devices)
    assert plan_waves(list(reversed(devices)), parse_waves("1%,10%,50%,100%")) == waves
    # A tiny fleet still gets one node per wave before everyone.
    assert [len(w) for w in plan_waves(["a", "b", "c"], parse_waves("1%,10%,100%"))] == [1, 1, 1]


@pytest.mark.parametrize("text", ["", "10%,5%,100%", "10%,50%", "0%,100%", "x"])
def test_bad_waves_are_refused(text: str) -> None:
    with pytest.raises(EdgedError, match="--waves"):
        parse_waves(text)


def test_abort_rule() -> None:
    share = AbortRule.parse("failed>2%")
    assert not share.tripped(2, 100) and share.tripped(3, 100)
    count = AbortRule.parse("failed > 0")
    assert not count.tripped(0, 5) and count.tripped(1, 500)
    with pytest.raises(EdgedError, match="--abort-if"):
        AbortRule.parse("errors>1")


def _artifact(updates: list[tuple[str, str]]) -> bytes:
    layers = [
        art.descriptor(
            art.UPDATE,
            digest,
            10,
            {art.BASE: base, art.SIGNATURE: base64.b64encode(b"{}").decode()},
        )
        for base, digest in updates
    ]
    layers.append(art.descriptor(art.VARIANT, "sha256:" + "c" * 64, 5, {art.VARIANT_ID: "fp32"}))
    return art.manifest_bytes(
        "m", "3", art.descriptor(art.MODEL_MANIFEST, "sha256:" + "d" * 64, 2), layers
    )


def test_the_node_picks_the_update_for_the_base_it_serves() -> None:
    data = _artifact(
        [("", "sha256:" + "0" * 64), ("1", "sha256:" + "1" * 64), ("2", "sha256:" + "2" * 64)]
    )
    parsed = art.parse(data)
    assert (parsed.model, parsed.version) == ("m", "3")
    assert parsed.variants == {"fp32": "sha256:" + "c" * 64}
    assert parsed.update_for(["2", "1"]).base_version == "2"  # type: ignore[union-attr]
    assert parsed.update_for(["9", "1"]).base_version == "1"  # type: ignore[union-attr]
    assert parsed.update_for(["9"]).base_version == ""  # type: ignore[union-attr]
    assert art.manifest_bytes("m", "3", {}, []) == art.manifest_bytes("m", "3", {}, [])


@pytest.mark.parametrize(
    ("document", "says"),
    [
        (b"nope", "not JSON"),
        (json.dumps({"artifactType": "application/vnd.other"}).encode(), "artifactType"),
        (
            json.dumps({"artifactType": art.ARTIFACT_TYPE, "annotations": {}}).encode(),
            "annotations",
        ),
    ],
)
def test_foreign_manifests_are_refused(document: bytes, says: str) -> None:
    with pytest.raises(art.ArtifactError, match=says):
        art.parse(document)
