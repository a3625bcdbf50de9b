"""The events one event's rules cause, published together once its rules have run.

Each rule's actions record their events on the case (a field set, a task added, a
transition); they wait here, by the rule that caused them, until every rule of the
rule set the event matched has run, and go to the outbox in the order they happened,
each run of consecutive field changes as one case.updated (domain.events.
coalesce_updates). A rule that failed or had applied before left its events on a case
that was discarded, so only applied rules' events are here. Every event is published
with the case's state and version after all the rules.
"""

from __future__ import annotations

from datetime import datetime

from careloop.domain.case import Case
from careloop.domain.events import Event, coalesce_updates
from careloop.services.ports import UnitOfWork
from careloop.services.recording import publish_each


class CausedEvents:
    def __init__(self, depth: int, event_key: str) -> None:
        self._depth = depth  # the chain depth of what the rules cause
        self._event_key = event_key
        self._events: list[tuple[Event, str]] = []

    def take(self, case: Case, rule_key: str) -> None:
        """Hold the events ``rule_key`` recorded on ``case`` (after it applied)."""
        if case.events:
            self._events.extend((event, rule_key) for event in case.events)
            case.events.clear()

    def publish(self, work: UnitOfWork, case: Case, now: datetime) -> None:
        """Put what is held into the outbox as of ``case`` now."""
        if not self._events:
            return
        held, self._events = self._events, []
        publish_each(
            work,
            case,
            now,
            [(event, self._cause(rules)) for event, rules in coalesce_updates(held, case.data)],
        )

    def _cause(self, rules: list[str]) -> dict[str, object]:
        cause: dict[str, object] = {
            "depth": self._depth,
            "rule": rules[0],
            "event": self._event_key,
        }
        if len(rules) > 1:
            cause["rules"] = rules  # a coalesced update: every rule whose change it keeps
        return cause
