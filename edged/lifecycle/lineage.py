"""A model's versions as a lineage graph, and rolling back one part of a lineage.

``undo(part)`` answers "the version I would have if only the teacher (or the dataset, or the
compression) were what it was before": the part's previous value is the one of the nearest
ancestor (along ``parent``) where it differs; the answer is the newest stored version equal to the
current one in everything else and carrying that value. When no stored version fits, it says
exactly what the controller would have to build.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from edged.names import version_key
from edged.store.lineage import PARTS, Lineage


@dataclasses.dataclass(frozen=True)
class Node:
    version: str
    parent: str | None
    lineage: Lineage
    changes: tuple[str, ...]  # what differs from the parent, one line per part


@dataclasses.dataclass(frozen=True)
class UndoChoice:
    version: str
    reason: str


@dataclasses.dataclass(frozen=True)
class UndoMissing:
    reason: str  # what the controller would have to build, or why nothing can be undone


def _same_except(a: Lineage, b: Lineage, part: str) -> bool:
    return all(a.part(p) == b.part(p) for p in PARTS if p != part)


def changes(lineage: Lineage, parent: Lineage | None) -> tuple[str, ...]:
    if parent is None:
        return tuple(f"{p}: {lineage.describe(p)}" for p in PARTS)
    return tuple(
        f"{p}: {parent.describe(p)} -> {lineage.describe(p)}"
        for p in PARTS
        if lineage.part(p) != parent.part(p)
    )


def graph(lineages: Mapping[str, Lineage]) -> list[Node]:
    """Every version with what changed from its parent, oldest first."""
    return [
        Node(
            version,
            lineage.parent,
            lineage,
            changes(lineage, lineages.get(lineage.parent) if lineage.parent else None),
        )
        for version, lineage in sorted(lineages.items(), key=lambda kv: version_key(kv[0]))
    ]


def undo(lineages: Mapping[str, Lineage], current: str, part: str) -> UndoChoice | UndoMissing:
    if part not in PARTS:
        return UndoMissing(f"cannot undo {part!r}: one of {', '.join(PARTS)}")
    now = lineages[current]
    previous: Lineage | None = None
    seen = {current}
    ancestor = now.parent
    while ancestor is not None and ancestor in lineages and ancestor not in seen:
        seen.add(ancestor)
        if lineages[ancestor].part(part) != now.part(part):
            previous = lineages[ancestor]
            break
        ancestor = lineages[ancestor].parent
    if previous is None:
        return UndoMissing(
            f"no ancestor of version {current} has another {part} than {now.describe(part)}: "
            "nothing to undo"
        )
    wanted = previous.part(part)
    fits = [
        v
        for v, lineage in lineages.items()
        if v != current and lineage.part(part) == wanted and _same_except(lineage, now, part)
    ]
    if fits:
        chosen = max(fits, key=version_key)
        return UndoChoice(
            chosen,
            f"version {chosen} has {part} {previous.describe(part)} (as version {ancestor} had) "
            f"and the same {', '.join(p for p in PARTS if p != part)} as version {current}",
        )
    keep = ", ".join(f"{p} {now.describe(p)}" for p in PARTS if p != part)
    return UndoMissing(
        f"no stored version has {part} {previous.describe(part)} (version {ancestor}'s) with "
        f"{keep} (version {current}'s); the controller would have to build one from "
        f"{part} {previous.describe(part)}, {keep}"
    )
