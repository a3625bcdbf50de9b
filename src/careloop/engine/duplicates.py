"""Duplicate referral detection at intake: link, flag and ask a person; never merge.

Candidates come from blocking keys (phonetic name + birth year, identifiers) of
referrals in the same specialty within the window, so the fuzzy scorer runs on a
handful of pairs whatever the size of the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from careloop.domain.case import Case
from careloop.domain.matching import PatientKey, PatientMatcher
from careloop.engine.actions import automation_actor
from careloop.engine.runs import new_run
from careloop.services.attachments import record_task, task_values
from careloop.services.cases import apply_update
from careloop.services.deps import Deps
from careloop.services.ports import UnitOfWork
from careloop.services.recording import publish_events
from careloop.services.referral_input import validate_changes

RULE_KEY = "duplicate-check"
FLAG = "possible_duplicate"


def detect_duplicates(
    work: UnitOfWork,
    deps: Deps,
    matcher: PatientMatcher,
    case: Case,
    event: Mapping[str, Any],
    now: datetime,
    window_days: int,
) -> list[int]:
    """Link ``case`` to earlier referrals of the same patient and specialty; returns
    the ids of the referrals it was linked to."""
    specialty = str(case.data.get("specialty", ""))
    key = PatientKey.from_referral(case.data)
    blocking = set(matcher.blocking_keys(key))
    since = case.created_at - timedelta(days=window_days)
    candidates = work.automation.duplicate_candidates(case.id, blocking, specialty, since)
    found: list[tuple[int, float, tuple[str, ...]]] = []
    for candidate in candidates:
        match = matcher.score(key, PatientKey.from_referral(candidate["data"]))
        if match.is_duplicate:
            found.append((int(candidate["id"]), match.score, match.reasons))
    inputs = {"candidates": [int(c["id"]) for c in candidates], "window_days": window_days}
    run = new_run(case.id, event, RULE_KEY, "built-in", 1, 0, now, inputs)
    run.update(
        outcome="applied" if found else "skipped",
        results=[
            {"linked_to": other, "score": round(value, 3), "reasons": list(why)}
            for other, value, why in found
        ],
    )
    # The run row is the once-only gate: a redelivered event finds it and does nothing.
    if not work.automation.record_run(run):
        return []
    work.automation.add_patient_keys(case.id, blocking, specialty, case.created_at)
    if found:
        _flag(work, deps, case, found, now)
    return [other for other, _, _ in found]


def _flag(
    work: UnitOfWork,
    deps: Deps,
    case: Case,
    found: list[tuple[int, float, tuple[str, ...]]],
    now: datetime,
) -> None:
    actor = automation_actor(RULE_KEY)
    links = [(other, score, list(reasons)) for other, score, reasons in found]
    work.automation.link_cases(case.id, links, FLAG, now)
    flags = sorted({*case.data.get("flags", []), FLAG})
    apply_update(
        work, deps, actor, case, validate_changes({"flags": flags}), now, "duplicate check"
    )
    others = ", ".join(f"#{other}" for other, _, _ in found)
    title = f"Review possible duplicate of referral {others}"
    record_task(work, actor, case, task_values(title, actor, now), now)
    publish_events(work, case, now, {"depth": 1, "rule": RULE_KEY})
