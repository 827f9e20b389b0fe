"""Lineage: the schema, the graph, and undoing one part on a store with a branching lineage."""

from __future__ import annotations

import pytest

from edged.errors import ManifestError
from edged.lifecycle.lineage import UndoChoice, UndoMissing, graph, undo
from edged.store.lineage import Lineage, parse_lineage


def lineage(parent: str | None, teacher: str, dataset: str, compression: str) -> Lineage:
    return parse_lineage(
        {
            "parent": parent,
            "teacher": {"name": teacher, "version": "1"},
            "dataset": dataset,
            "compression": {"method": compression},
        }
    )


# 1 (teacher a, data d1, int8)
# ├─ 2 (teacher b)                   <- a new teacher
# │  └─ 4 (teacher b, data d2)       <- then new data
# └─ 3 (teacher a, data d2)          <- new data on the old teacher
#    └─ 5 (teacher a, data d2, q4)   <- then another compression
STORE = {
    "1": lineage(None, "a", "d1", "int8"),
    "2": lineage("1", "b", "d1", "int8"),
    "3": lineage("1", "a", "d2", "int8"),
    "4": lineage("2", "b", "d2", "int8"),
    "5": lineage("3", "a", "d2", "q4"),
}


def test_undo_teacher_picks_the_stored_version_with_the_old_teacher_and_the_rest_unchanged() -> (
    None
):
    choice = undo(STORE, "4", "teacher")
    assert isinstance(choice, UndoChoice)
    assert choice.version == "3"  # teacher a, data d2, int8: 4's data and compression
    assert "teacher a 1" in choice.reason


def test_undo_dataset_and_compression() -> None:
    assert undo(STORE, "4", "dataset") == UndoChoice("2", undo(STORE, "4", "dataset").reason)
    choice = undo(STORE, "5", "compression")
    assert isinstance(choice, UndoChoice) and choice.version == "3"


def test_undo_says_what_the_controller_would_have_to_build() -> None:
    missing = undo(STORE, "5", "dataset")  # teacher a + data d1 + q4: never built
    assert isinstance(missing, UndoMissing)
    assert "dataset d1" in missing.reason and "compression q4" in missing.reason
    assert "the controller would have to build" in missing.reason
    nothing = undo(STORE, "1", "teacher")
    assert isinstance(nothing, UndoMissing) and "nothing to undo" in nothing.reason


def test_the_graph_says_what_changed_at_each_step() -> None:
    nodes = {n.version: n for n in graph(STORE)}
    assert nodes["2"].changes == ("teacher: a 1 -> b 1",)
    assert nodes["5"].changes == ("compression: int8 -> q4",)
    assert nodes["4"].parent == "2"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"parent": 3}, "lineage.parent"),
        ({"teacher": "big"}, "lineage.teacher"),
        ({"compression": {"bits": 4}}, "lineage.compression"),
        ({"datset": "x"}, "lineage.datset"),
        ({"finetune_dataset": ""}, "lineage.finetune_dataset"),
    ],
)
def test_a_bad_lineage_names_the_field(raw: dict, field: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ManifestError, match=field.replace(".", r"\.")):
        parse_lineage(raw)
