"""The automation log's rows, and the once-only gate they are.

Every reaction to an event (a rule, an SLA step, the duplicate check) is recorded once
per (event, key). Effects run in a savepoint and the row is written last: if an
earlier delivery of the same event already wrote it, the effects are rolled back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from careloop.services.ports import UnitOfWork


def new_run(
    case_id: int,
    event: Mapping[str, Any],
    rule_key: str,
    ruleset_key: str,
    ruleset_version: int,
    depth: int,
    now: datetime,
    inputs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "event_key": str(event["idempotency_key"]),
        "event_type": str(event["event_type"]),
        "rule_key": rule_key,
        "ruleset_key": ruleset_key,
        "ruleset_version": ruleset_version,
        "depth": depth,
        "inputs": dict(inputs or {}),
        "results": [],
        "error": None,
        "created_at": now,
    }


def apply_once(
    work: UnitOfWork, run: dict[str, Any], effects: Callable[[], list[dict[str, Any]]]
) -> bool:
    """Run ``effects`` and record ``run`` as applied; False (and nothing changed) when
    an earlier delivery of the event recorded it already. Errors of ``effects`` roll
    its writes back and propagate."""
    try:
        with work.savepoint():
            run.update(outcome="applied", results=effects())
            if not work.automation.record_run(run):
                raise _AlreadyApplied
    except _AlreadyApplied:
        return False
    return True


class _AlreadyApplied(Exception):
    pass
