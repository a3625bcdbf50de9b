"""Events a case records as it changes; the outbox carries them out after commit."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T", bound=Hashable)
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
    """``events`` (each with what caused it) with each run of consecutive case.updated
    events as one, listing what caused the changes it keeps.

    Several rules reacting to one event each set a field: subscribers and field-change
    rules get one update with every field that ends up changed and its value before
    the first change, as they would from one person's edit. Only updates with nothing
    between them merge, so no change moves past a transition or a task. A field set and
    set back is left out, and an update left with no field is dropped. ``data`` is the
    case's data after all of ``events``."""
    coalesced: list[tuple[Event, list[T]]] = []
    run: list[tuple[Event, T]] = []
    for position, (event, cause) in enumerate(events):
        if event.type == UPDATED:
            run.append((event, cause))
            continue
        coalesced.extend(_merge_run(run, events[position:], data))
        run = []
        coalesced.append((event, [cause]))
    coalesced.extend(_merge_run(run, (), data))
    return coalesced


def _merge_run(
    run: list[tuple[Event, T]], later: Sequence[tuple[Event, T]], data: Mapping[str, Any]
) -> list[tuple[Event, list[T]]]:
    if len(run) < 2:
        return [(event, [cause]) for event, cause in run]
    before: dict[str, Any] = {}
    for event, _ in run:
        for name, value in event.payload["before"].items():
            before.setdefault(name, value)

    def after_run(name: str) -> Any:
        # What a later update found the field at, else what the case holds now.
        for event, _ in later:
            if event.type == UPDATED and name in event.payload["before"]:
                return event.payload["before"][name]
        return data.get(name)

    fields = sorted(name for name, value in before.items() if after_run(name) != value)
    if not fields:
        return []
    causes = [cause for event, cause in run if not set(event.payload["fields"]).isdisjoint(fields)]
    merged = Event(UPDATED, {"fields": fields, "before": {name: before[name] for name in fields}})
    return [(merged, list(dict.fromkeys(causes)))]
