"""On PostgreSQL a committed event wakes idle workers at once (LISTEN/NOTIFY,
adapters/db/outbox_signal.py), long before their poll interval; a listener whose
connection is lost connects again and catches up."""

import threading
import time
from collections.abc import Callable

from sqlalchemy import text

from careloop.adapters.db.outbox_signal import APPLICATION_NAME, outbox_listener
from careloop.bootstrap import App, build_worker
from tests.conftest import new_case


def _eventually(check: Callable[[], bool], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


class _Wakes:
    """Counts the listener's calls to wake the relay."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.count += 1


def _listen(app: App) -> tuple[_Wakes, threading.Event, threading.Thread]:
    listen = outbox_listener(app.engine)
    assert listen is not None
    wakes, stop = _Wakes(), threading.Event()
    thread = threading.Thread(target=listen, args=(wakes, stop), daemon=True)
    thread.start()
    assert _eventually(lambda: wakes.count == 1), "the listener did not connect"
    return wakes, stop, thread


def _pending(app: App) -> int:
    with app.deps.read_uow() as work:
        return work.outbox.counts()["pending"]


def test_a_commit_with_events_wakes_the_listener_and_one_without_does_not(
    pg_app: App,
) -> None:
    wakes, stop, thread = _listen(pg_app)
    try:
        new_case(pg_app)  # commits a referral and its case.created event
        assert _eventually(lambda: wakes.count >= 2)
        after_events = wakes.count
        with pg_app.deps.uow() as work:  # events added, then rolled back
            work.outbox.add(None, "test.rolled_back", {}, "rolled-back-1", pg_app.deps.clock.now())
        with pg_app.deps.uow() as work:  # committed, with no event
            work.commit()
        time.sleep(1.0)
        assert wakes.count == after_events
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def test_a_listener_whose_connection_dies_connects_again(pg_app: App) -> None:
    wakes, stop, thread = _listen(pg_app)
    try:
        with pg_app.engine.connect() as connection:
            killed = connection.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = :name"
                ),
                {"name": APPLICATION_NAME},
            ).scalar_one()
        assert killed >= 1
        # Back: it wakes the relay on connecting, for what was committed meanwhile...
        assert _eventually(lambda: wakes.count >= 2)
        reconnected = wakes.count
        new_case(pg_app)  # ...and hears the next commit
        assert _eventually(lambda: wakes.count > reconnected)
    finally:
        stop.set()
        thread.join(5)


def test_an_idle_worker_relays_a_new_event_long_before_its_poll_interval(
    pg_app: App,
) -> None:
    worker = build_worker(pg_app)
    worker.poll_seconds = 60.0  # polling alone would take a minute
    worker.start()
    try:
        assert _eventually(lambda: _pending(pg_app) == 0)
        time.sleep(0.5)  # every loop is idle, waiting out its poll interval
        new_case(pg_app)
        assert _eventually(lambda: _pending(pg_app) == 0, within=10.0)
    finally:
        worker.stop()


def test_sqlite_has_no_listener(sqlite_app: App) -> None:
    assert outbox_listener(sqlite_app.engine) is None
    assert build_worker(sqlite_app).listen is None
