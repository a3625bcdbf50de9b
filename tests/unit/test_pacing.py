"""Foreground first (engine/pacing.py): the in-process worker gives way to requests in
flight, for a bounded time only."""

from careloop.engine.pacing import Foreground
from careloop.engine.worker import Worker


class Ticking:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_busy_while_a_request_is_in_flight_and_for_a_short_quiet_spell_after() -> None:
    clock = Ticking()
    foreground = Foreground(quiet_seconds=0.05, clock=clock)
    assert not foreground.busy()

    foreground.enter()
    foreground.enter()
    foreground.leave()
    assert foreground.busy()  # one still in flight
    clock.now += 10
    assert foreground.busy()
    foreground.leave()
    assert foreground.busy()  # a gap between two requests of a burst
    clock.now += 0.06
    assert not foreground.busy()


class CountingForeground(Foreground):
    def __init__(self, busy_for: int) -> None:
        super().__init__()
        self.busy_for, self.asked = busy_for, 0

    def busy(self) -> bool:
        self.asked += 1
        return self.asked <= self.busy_for


def _worker(foreground: Foreground | None, max_yield: float) -> Worker:
    return Worker(uow=None, clock=None, handlers=[], sender=None, sign=None,  # type: ignore[arg-type]
                  foreground=foreground, max_yield_seconds=max_yield)


def test_the_worker_waits_until_the_requests_are_done() -> None:
    foreground = CountingForeground(busy_for=3)

    _worker(foreground, max_yield=30).give_way()

    assert foreground.asked == 4  # returned as soon as the API was idle


def test_the_worker_never_waits_longer_than_its_bound() -> None:
    foreground = CountingForeground(busy_for=10**9)  # a burst that never ends

    _worker(foreground, max_yield=0.05).give_way()

    assert 1 < foreground.asked < 10**9


def test_no_waiting_without_a_foreground_or_with_a_zero_bound() -> None:
    foreground = CountingForeground(busy_for=10**9)

    _worker(None, max_yield=30).give_way()
    _worker(foreground, max_yield=0).give_way()

    assert foreground.asked == 0


def test_a_worker_stopped_while_giving_way_runs_no_further_step() -> None:
    import threading

    steps: list[int] = []
    worker = _worker(CountingForeground(busy_for=10**9), max_yield=30)
    loop = threading.Thread(target=worker._loop, args=("relay", lambda: steps.append(1) or 0))
    loop.start()

    worker.stop()  # the API never went quiet: the loop is still giving way
    loop.join(timeout=5)

    assert not loop.is_alive()
    assert steps == []


def test_fired_timers_wake_the_relay_instead_of_waiting_out_its_poll_interval() -> None:
    import threading

    relay_calls: list[int] = []
    relay_first, relay_again = threading.Event(), threading.Event()
    fired = [1]  # one batch of timers, then nothing

    def relay() -> int:
        relay_calls.append(1)
        (relay_first if len(relay_calls) == 1 else relay_again).set()
        return 0

    def timers() -> int:
        relay_first.wait(5)  # the relay has looked once and gone to sleep
        return fired.pop() if fired else 0

    worker = _worker(None, max_yield=0)
    worker.loops = lambda: {"relay": relay, "timers": timers}  # type: ignore[method-assign]
    worker._idle_wait = lambda name: 30.0  # type: ignore[method-assign]
    worker.start()
    try:
        woken = relay_again.wait(5)
    finally:
        worker.stop(timeout=5)

    assert woken  # long before the relay's 30 s poll interval
