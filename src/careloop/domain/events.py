"""Events a case records as it changes; the outbox carries them out after commit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
UPDATED = "case.updated"


@dataclass(frozen=True)
class Event:
    type: str  # e.g. "case.created", "case.transitioned"
    payload: dict[str, Any] = field(default_factory=dict)
    # What makes this event unique within its case when the case version does not
    # change (notes, documents and tasks leave the version alone), e.g. "note:17".
    key: str = ""


def coalesce_updates(
    events: Sequence[tuple[Event, T]], data: Mapping[str, Any]
) -> list[tuple[Event, list[T]]]:
    """``events`` (each with what caused it) with their field changes as one
    case.updated, where the first of them was, listing what caused each.

    Several rules reacting to one event each set a field: subscribers and field-change
    rules get one update with every field that ends up changed and its value before
    the first change, as they would from one person's edit. A field set and set back
    is left out, and an update left with no field is dropped. ``data`` is the case's
    data after them all."""
    updates = [cause for event, cause in events if event.type == UPDATED]
    if len(updates) < 2:
        return [(event, [cause]) for event, cause in events]
    before: dict[str, Any] = {}
    for event, _ in events:
        if event.type == UPDATED:
            for name, value in event.payload["before"].items():
                before.setdefault(name, value)
    fields = sorted(name for name, value in before.items() if data.get(name) != value)
    merged = Event(UPDATED, {"fields": fields, "before": {n: before[n] for n in fields}})
    coalesced: list[tuple[Event, list[T]]] = []
    placed = False  # the merged update stands where the first update was
    for event, cause in events:
        if event.type != UPDATED:
            coalesced.append((event, [cause]))
        elif not placed:
            placed = True
            if fields:
                coalesced.append((merged, list(dict.fromkeys(updates))))
    return coalesced
