"""The outbox relay delivers committed events in order and never drops a failure."""

from collections.abc import Mapping
from typing import Any

from sqlalchemy import event, select

from careloop.adapters.db.tables import outbox
from careloop.bootstrap import App
from careloop.engine.outbox import relay_once
from careloop.services.attachments import record_task
from careloop.services.cases import create_referral, transition_case
from careloop.services.ports import ManualClock, UnitOfWork
from careloop.services.referral_input import validate_referral
from tests.conftest import INTAKE, referral_payload


def _make_events(app: App) -> int:
    case, _ = create_referral(app.deps, INTAKE, validate_referral(referral_payload()))
    transition_case(app.deps, INTAKE, case.id, "begin_review", 1)
    return case.id


def test_events_are_delivered_once_in_commit_order(app: App) -> None:
    case_id = _make_events(app)
    seen: list[tuple[int, str]] = []
    # A case's events may share a batch; they are handled in the order they committed.
    assert (
        relay_once(
            app.deps.uow,
            app.deps.clock,
            [lambda w, e: seen.append((e["case_id"], e["event_type"]))],
        )
        == 2
    )
    assert seen == [(case_id, "case.created"), (case_id, "case.transitioned")]
    assert relay_once(app.deps.uow, app.deps.clock, [lambda w, e: seen.append(("x", ""))]) == 0
    assert len(seen) == 2


def test_a_failing_subscriber_leaves_the_event_pending_with_backoff_and_holds_later_ones(
    app: App, clock: ManualClock
) -> None:
    _make_events(app)
    calls: list[str] = []

    def flaky(work: UnitOfWork, event: Mapping[str, Any]) -> None:
        calls.append(event["event_type"])
        raise ConnectionError("receiver down")

    assert relay_once(app.deps.uow, app.deps.clock, [flaky]) == 0
    # Tried twice in the one call: optimistically, then (rolled back) with savepoints.
    # The second event of the same case is held back both times so order is kept.
    assert calls == ["case.created", "case.created"]
    with app.engine.connect() as connection:
        rows = connection.execute(select(outbox).order_by(outbox.c.id)).mappings().all()
    assert rows[0]["attempts"] == 1 and "receiver down" in rows[0]["last_error"]
    assert rows[0]["available_at"] > clock.now() and rows[1]["attempts"] == 0
    # Nor is it delivered in a later batch while the first waits out its backoff.
    assert relay_once(app.deps.uow, app.deps.clock, [lambda w, e: None]) == 0
    clock.advance(seconds=5)
    delivered: list[str] = []
    assert (
        relay_once(app.deps.uow, app.deps.clock, [lambda w, e: delivered.append(e["event_type"])])
        == 2
    )
    assert delivered == ["case.created", "case.transitioned"]


def test_an_event_that_keeps_failing_is_dead_lettered_then_replayed_and_its_writes_undone(
    app: App, clock: ManualClock
) -> None:
    case_id = _make_events(app)
    attempts = 0

    def broken(work: UnitOfWork, event: Mapping[str, Any]) -> None:
        nonlocal attempts
        attempts += 1
        case = work.cases.get(event["case_id"])
        values = {
            "title": "half-done",
            "status": "open",
            "assignee": None,
            "due_at": None,
            "created_by": 0,
            "created_at": clock.now(),
        }
        record_task(work, INTAKE, case, values, clock.now())
        raise ConnectionError("still down")

    for _ in range(3):
        relay_once(app.deps.uow, app.deps.clock, [broken], max_attempts=3)
        clock.advance(hours=2)
    assert attempts == 6  # three relay attempts, each optimistic and then with savepoints
    with app.deps.read_uow() as work:
        dead = work.outbox.dead_letters()
        counts = work.outbox.counts()
        assert work.cases.tasks(case_id) == []  # each failed attempt rolled back its writes
    assert [row["event_type"] for row in dead] == ["case.created"]
    assert dead[0]["attempts"] == 3 and "still down" in dead[0]["last_error"]
    assert counts == {"pending": 1, "dead": 1}
    # The dead letter no longer holds the case's later events back.
    later: list[str] = []
    assert (
        relay_once(app.deps.uow, app.deps.clock, [lambda w, e: later.append(e["event_type"])]) == 1
    )
    assert later == ["case.transitioned"]
    with app.deps.uow() as work:
        assert work.outbox.replay(None, clock.now()) == 1
        work.commit()
    assert (
        relay_once(app.deps.uow, app.deps.clock, [lambda w, e: later.append(e["event_type"])]) == 1
    )
    assert later == ["case.transitioned", "case.created"]


def test_a_batch_that_succeeds_whole_opens_no_savepoint_and_a_failure_spares_the_rest(
    app: App, clock: ManualClock
) -> None:
    first = _make_events(app)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        statements.append(sql)

    event.listen(app.engine, "before_cursor_execute", count)
    try:
        handled: list[tuple[int, str]] = []
        assert relay_once(
            app.deps.uow, clock, [lambda w, e: handled.append((e["case_id"], e["event_type"]))]
        ) == 2
        assert handled == [(first, "case.created"), (first, "case.transitioned")]
        assert not [sql for sql in statements if "SAVEPOINT" in sql.upper()]
        failing, sound = _make_events(app), _make_events(app)

        def fails_for_one(work: UnitOfWork, e: Mapping[str, Any]) -> None:
            if e["case_id"] == failing:
                raise ConnectionError("receiver down")
            handled.append((e["case_id"], e["event_type"]))

        handled.clear()
        assert relay_once(app.deps.uow, clock, [fails_for_one]) == 2
    finally:
        event.remove(app.engine, "before_cursor_execute", count)
    # The failure sent the batch round again with savepoints; the other case's events
    # were delivered by that second round, the failing case's later event held back.
    assert handled.count((sound, "case.transitioned")) >= 1
    with app.engine.connect() as connection:
        rows = connection.execute(select(outbox).order_by(outbox.c.id)).mappings().all()
    published = {(r["case_id"], r["event_type"]) for r in rows if r["published_at"] is not None}
    assert {(sound, "case.created"), (sound, "case.transitioned")} <= published
    assert not {(failing, "case.created"), (failing, "case.transitioned")} & published
    failed = [r for r in rows if r["case_id"] == failing and r["last_error"]]
    assert len(failed) == 1 and failed[0]["attempts"] == 1
    assert failed[0]["event_type"] == "case.created"
