"""Moving several referrals in one transaction (services.cases.transition_cases): each
move stands alone, refusals are audited, and what moved is written like a single move."""

from typing import Any

import pytest
from sqlalchemy import text

from careloop.adapters.db.audit_store import verify_audit_log
from careloop.bootstrap import App
from careloop.domain.access import Actor
from careloop.domain.case import Case
from careloop.domain.errors import (
    GuardFailed,
    NotFound,
    OutOfReach,
    PermissionDenied,
    StaleVersion,
    TransitionNotAllowed,
)
from careloop.services import cases
from careloop.services.cases import Move, transition_cases
from tests.conftest import AUDITOR, INTAKE, new_case


def _cases(app: App, n: int) -> list[int]:
    return [new_case(app) for _ in range(n)]


def _scalar(app: App, sql: str) -> int:
    with app.engine.connect() as connection:
        return int(connection.execute(text(sql)).scalar_one())


def test_a_batch_of_good_moves_is_written_like_single_moves(app: App) -> None:
    ids = _cases(app, 3)

    results = transition_cases(app.deps, INTAKE, [Move(i, "begin_review", 1) for i in ids])

    assert all(isinstance(r, Case) and r.state == "documentation_review" for r in results)
    with app.deps.read_uow() as work:
        for case_id in ids:
            stored = work.cases.get(case_id)
            assert (stored.state, stored.version) == ("documentation_review", 2)
            assert [h["to_state"] for h in work.cases.history(case_id)][-1] == (
                "documentation_review"
            )
    assert _scalar(app, "SELECT count(*) FROM outbox WHERE event_type = 'case.transitioned'") == 3
    assert _scalar(app, "SELECT count(*) FROM audit_log WHERE action = 'case.transition'") == 3
    assert all(result.ok for result in verify_audit_log(app.engine))


def test_each_move_stands_alone(app: App) -> None:
    good, stale, guarded, elsewhere = _cases(app, 4)
    far = Actor(
        user_id=9,
        username="far.away",
        roles=frozenset({"intake_coordinator"}),
        source_address="127.0.0.1",
        locations=frozenset({"a-clinic-nobody-uses"}),
    )
    moves = [
        Move(good, "begin_review", 1),
        Move(stale, "begin_review", 5),
        Move(guarded, "cancel", 1),  # a cancel needs a reason
        Move(good, "begin_review", 2),  # already moved by the first
        Move(999_999, "begin_review", 1),
    ]

    results = transition_cases(app.deps, INTAKE, moves)
    (far_result,) = transition_cases(app.deps, far, [Move(elsewhere, "begin_review", 1)])

    assert isinstance(results[0], Case) and results[0].state == "documentation_review"
    assert [type(r) for r in results[1:]] == [
        StaleVersion,
        GuardFailed,
        TransitionNotAllowed,
        NotFound,
    ]
    assert isinstance(far_result, OutOfReach)
    with app.deps.read_uow() as work:
        assert [work.cases.get(i).version for i in (good, stale, guarded, elsewhere)] == [
            2, 1, 1, 1,
        ]
    assert _scalar(app, "SELECT count(*) FROM outbox WHERE event_type = 'case.transitioned'") == 1
    # Refusals are audited by the caller in a transaction of their own (the API edge,
    # tests/e2e/test_record_rules_api.py), as for a single move.
    assert _scalar(app, "SELECT count(*) FROM audit_log WHERE outcome = 'denied'") == 0
    assert all(result.ok for result in verify_audit_log(app.engine))


def test_a_move_failing_unexpectedly_fails_alone(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, broken, last = _cases(app, 3)
    real_publish = cases.publish_events

    def publish_failing_one(uow: Any, case: Case, now: Any, *rest: Any) -> None:
        if case.id == broken:  # after its save, history and audit entry
            raise RuntimeError("outbox unavailable")
        real_publish(uow, case, now, *rest)

    monkeypatch.setattr(cases, "publish_events", publish_failing_one)

    results = transition_cases(
        app.deps, INTAKE, [Move(i, "begin_review", 1) for i in (first, broken, last)]
    )

    assert [type(r).__name__ for r in results] == ["Case", "RuntimeError", "Case"]
    with app.deps.read_uow() as work:
        assert [work.cases.get(i).state for i in (first, broken, last)] == [
            "documentation_review", "intake_received", "documentation_review",
        ]
    assert _scalar(app, "SELECT count(*) FROM case_history WHERE to_state = "
                        "'documentation_review'") == 2
    assert all(result.ok for result in verify_audit_log(app.engine))


def test_an_actor_who_may_not_move_cases_is_refused_whole(app: App) -> None:
    (case_id,) = _cases(app, 1)

    with pytest.raises(PermissionDenied):
        transition_cases(app.deps, AUDITOR, [Move(case_id, "begin_review", 1)])
