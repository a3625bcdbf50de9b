"""An idle timer loop sleeps until the next timer is due, not a whole poll interval
(engine/timers.py seconds_until_due, Worker._idle_wait)."""

from datetime import timedelta

from careloop.bootstrap import App, build_worker
from careloop.engine.timers import fire_due_timers, seconds_until_due
from careloop.services.ports import ManualClock


def _plan(app: App, clock: ManualClock, key: str, in_seconds: float) -> None:
    with app.deps.uow() as work:
        assert work.timers.plan({
            "case_id": None, "kind": "state", "key": key, "name": "wake-test",
            "due_at": clock.now() + timedelta(seconds=in_seconds), "payload": {},
            "created_at": clock.now(),
        })
        work.commit()


def test_the_next_due_timer_sets_how_long_an_idle_timer_loop_sleeps(
    app: App, clock: ManualClock
) -> None:
    worker = build_worker(app)
    worker.poll_seconds = 1.0
    assert seconds_until_due(app.deps.uow, clock) is None
    assert worker._idle_wait("timers") == 1.0  # nothing pending: the poll interval

    _plan(app, clock, "later", 90)
    _plan(app, clock, "sooner", 0.25)

    assert seconds_until_due(app.deps.uow, clock) == 0.25
    assert worker._idle_wait("timers") == 0.25
    assert worker._idle_wait("relay") == 1.0  # other loops poll as before
    clock.advance(seconds=0.25)
    assert fire_due_timers(app.deps.uow, clock) == 1
    assert seconds_until_due(app.deps.uow, clock) == 89.75
    assert worker._idle_wait("timers") == 1.0  # capped at the poll interval
    clock.advance(seconds=100)
    assert seconds_until_due(app.deps.uow, clock) == 0.0
    assert worker._idle_wait("timers") == 0.01  # due but held elsewhere: a short floor
