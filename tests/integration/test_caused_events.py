"""Events a relay batch's own handlers cause are handled in the same transaction, in
order, and written already published; where order could break they wait their turn."""

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from careloop.adapters.db.tables import outbox
from careloop.bootstrap import App
from careloop.engine.outbox import relay_once
from careloop.services.cases import create_referral, transition_case
from careloop.services.ports import ManualClock, UnitOfWork
from careloop.services.referral_input import validate_referral
from tests.conftest import INTAKE, referral_payload

# What the test handler causes: each event type, the one it leads to.
CHAIN = {"case.transitioned": "test.caused", "test.caused": "test.second"}


def _make_events(app: App) -> int:
    case, _ = create_referral(app.deps, INTAKE, validate_referral(referral_payload()))
    transition_case(app.deps, INTAKE, case.id, "begin_review", 1)
    return case.id


class Causer:
    """A subscriber that records what it sees and, like a rule, causes further events."""

    def __init__(self, chain: Mapping[str, str] = CHAIN, read_outbox_on: str = "") -> None:
        self.seen: list[tuple[int, str]] = []
        self._chain = chain
        self._read_outbox_on = read_outbox_on

    def __call__(self, work: UnitOfWork, event: Mapping[str, Any]) -> None:
        case_id, event_type = event["case_id"], str(event["event_type"])
        self.seen.append((case_id, event_type))
        if event_type == self._read_outbox_on:
            work.outbox.for_case(case_id)  # a read of the outbox writes what waits first
        caused = self._chain.get(event_type)
        if caused:
            key = f"{event['idempotency_key']}>{caused}"
            work.outbox.add(case_id, caused, {"case_id": case_id}, key, event["created_at"])


def _rows(app: App) -> list[dict[str, Any]]:
    with app.engine.connect() as connection:
        query = select(outbox).order_by(outbox.c.id)
        return [dict(r) for r in connection.execute(query).mappings()]


def test_caused_events_are_handled_in_the_same_batch_and_stored_published(
    app: App, clock: ManualClock
) -> None:
    case_id = _make_events(app)
    causer = Causer()
    assert relay_once(app.deps.uow, clock, [causer]) == 4
    assert causer.seen == [
        (case_id, "case.created"),
        (case_id, "case.transitioned"),
        (case_id, "test.caused"),
        (case_id, "test.second"),
    ]
    rows = _rows(app)
    assert [r["event_type"] for r in rows] == [e for _, e in causer.seen]
    assert all(r["published_at"] is not None and r["attempts"] == 1 for r in rows)
    assert relay_once(app.deps.uow, clock, [causer]) == 0


def test_caused_events_wait_behind_a_pending_event_outside_the_batch(
    app: App, clock: ManualClock
) -> None:
    case_id = _make_events(app)
    causer = Causer(chain={"case.created": "test.caused"})
    # The batch holds the case's first event only; its second is pending outside it.
    assert relay_once(app.deps.uow, clock, [causer], batch=1) == 1
    pending = [r["event_type"] for r in _rows(app) if r["published_at"] is None]
    assert pending == ["case.transitioned", "test.caused"]
    assert relay_once(app.deps.uow, clock, [causer]) == 2
    assert causer.seen == [
        (case_id, "case.created"),
        (case_id, "case.transitioned"),
        (case_id, "test.caused"),
    ]


def test_a_careful_batch_leaves_caused_events_for_a_later_one(app: App, clock: ManualClock) -> None:
    failing, sound = _make_events(app), _make_events(app)
    causer = Causer()

    def fails_for_one(work: UnitOfWork, event: Mapping[str, Any]) -> None:
        if event["case_id"] == failing:
            raise ConnectionError("receiver down")
        causer(work, event)

    # The failure re-runs the batch with savepoints, which handles only what it claimed.
    assert relay_once(app.deps.uow, clock, [fails_for_one]) == 2
    pending = [(r["case_id"], r["event_type"]) for r in _rows(app) if r["published_at"] is None]
    assert (sound, "test.caused") in pending
    causer.seen.clear()
    clock.advance(seconds=60)
    relay_once(app.deps.uow, clock, [causer])
    assert (sound, "test.caused") in causer.seen and (sound, "test.second") in causer.seen
    assert causer.seen.index((sound, "test.caused")) < causer.seen.index((sound, "test.second"))


def test_a_caused_event_written_while_it_was_handled_is_marked_published(
    app: App, clock: ManualClock
) -> None:
    _make_events(app)
    # Handling test.caused reads the outbox, which writes the waiting rows, itself among
    # them, as pending: it is then marked published by its key.
    causer = Causer(read_outbox_on="test.caused")
    assert relay_once(app.deps.uow, clock, [causer]) == 4
    rows = _rows(app)
    assert len(rows) == 4
    assert all(r["published_at"] is not None and r["attempts"] == 1 for r in rows)
    assert relay_once(app.deps.uow, clock, [causer]) == 0
