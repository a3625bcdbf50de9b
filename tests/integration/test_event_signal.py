"""On PostgreSQL a committed pending event is announced (migration 0008), and an idle
relay wakes on the announcement instead of sleeping out its poll interval."""

import time

from sqlalchemy import select

from careloop.adapters.db.event_signal import EventSignal
from careloop.adapters.db.tables import outbox
from careloop.bootstrap import App, build_worker
from careloop.engine.outbox import relay_once
from tests.conftest import new_case


def _unpublished(app: App) -> int:
    with app.engine.connect() as connection:
        query = select(outbox.c.id).where(outbox.c.published_at.is_(None))
        return len(connection.execute(query).all())


def test_a_committed_event_is_announced_and_a_commit_adding_none_is_not(pg_app: App) -> None:
    signal = EventSignal(pg_app.engine)
    try:
        assert signal.wait(0.1) is False  # listening from here on; nothing yet
        new_case(pg_app)
        assert signal.wait(5.0) is True
        assert signal.wait(0.1) is False  # one commit, one wake-up
        # Relaying marks the event published (an UPDATE) and adds none: nobody to wake.
        assert relay_once(pg_app.deps.uow, pg_app.deps.clock, [lambda w, e: None]) == 1
        assert signal.wait(0.3) is False
    finally:
        signal.close()


def test_an_idle_relay_wakes_on_an_announced_event_long_before_its_poll_interval(
    pg_app: App,
) -> None:
    worker = build_worker(pg_app)
    assert isinstance(worker.events, EventSignal)
    worker.poll_seconds = 120.0  # only an announcement can wake it within the test
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while worker.events is not None and worker.events._connection is None:
            assert time.monotonic() < deadline, "the relay never went idle"
            time.sleep(0.01)  # until the idle relay listens
        new_case(pg_app)
        while _unpublished(pg_app) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _unpublished(pg_app) == 0
    finally:
        worker.stop()
    assert worker.events is not None and worker.events._connection is None  # closed on stop
