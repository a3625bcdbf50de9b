"""The worker: outbox relay, timers, webhook deliveries and periodic jobs, each a loop.

`careloop worker` runs one in the foreground; any number of them may run on any number
of machines against PostgreSQL (they claim work with SKIP LOCKED). `careloop serve`
runs one in background threads on the embedded SQLite default.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from careloop.engine.outbox import Handler, Preparer, relay_once
from careloop.engine.pacing import Foreground
from careloop.engine.timers import fire_due_timers, seconds_until_due
from careloop.engine.webhooks import Sender, Signer, deliver_once
from careloop.services.ports import Clock, UnitOfWork, UnitOfWorkFactory

log = logging.getLogger("careloop.worker")
IntegrationPort = Callable[[str, Mapping[str, Any]], None]


@dataclass(frozen=True)
class Job:
    """A periodic job: runs at most once per interval across all workers."""

    name: str
    interval: timedelta
    run: Callable[[datetime], str]


def call_integrations(ports: Mapping[str, IntegrationPort]) -> Handler:
    """The subscriber that performs a rule's call_integration through its port. A port
    that fails raises, so the event retries and finally dead-letters: never dropped."""

    def handle(work: UnitOfWork, event: Mapping[str, Any]) -> None:
        if event["event_type"] != "integration.requested":
            return
        payload = event["payload"]
        port = ports.get(str(payload["port"]))
        if port is None:
            raise LookupError(f"no integration port {payload['port']!r} is configured")
        port(str(payload["operation"]), {**payload.get("params", {}), "case_id": event["case_id"]})

    return handle


def run_due_jobs(uow: UnitOfWorkFactory, clock: Clock, jobs: list[Job]) -> int:
    by_name = {job.name: job for job in jobs}
    ran = 0
    with uow() as work:
        now = clock.now()
        for name in work.timers.claim_due_jobs(sorted(by_name), now):
            job = by_name[name]
            try:
                with work.savepoint():
                    result = job.run(now)
            except Exception as error:  # a failing job reports and retries next interval
                log.exception("job %s failed", name)
                result = f"failed: {error!r}"
            work.timers.finish_job(name, now, now + job.interval, result)
            ran += 1
        work.commit()
    return ran


@dataclass
class Worker:
    uow: UnitOfWorkFactory
    clock: Clock
    handlers: list[Handler]
    sender: Sender
    sign: Signer
    jobs: list[Job] = field(default_factory=list)
    prepare: Preparer | None = None
    poll_seconds: float = 1.0
    # Small relay batches keep each transaction short (build_worker picks per database).
    relay_batch: int = 20
    timer_batch: int = 500
    delivery_batch: int = 50
    # Set when the worker shares its interpreter with the API (careloop serve): each
    # loop then gives way to requests in flight, for at most max_yield_seconds.
    foreground: Foreground | None = None
    max_yield_seconds: float = 1.0
    # Run in a thread of its own: calls its first argument whenever events are committed
    # (adapters/db/outbox_signal.py), which wakes the relay before its poll interval.
    listen: Callable[[Callable[[], None], threading.Event], None] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    # Per loop: set to cut its idle sleep short (new work for it, or stop()).
    _wake: dict[str, threading.Event] = field(default_factory=dict)
    _threads: list[threading.Thread] = field(default_factory=list)

    def loops(self) -> dict[str, Callable[[], int]]:
        return {
            "relay": lambda: relay_once(
                self.uow, self.clock, self.handlers, self.relay_batch, prepare=self.prepare
            ),
            "timers": lambda: fire_due_timers(self.uow, self.clock, self.timer_batch),
            "deliveries": lambda: deliver_once(
                self.uow, self.clock, self.sender, self.sign, self.delivery_batch
            ),
            "jobs": lambda: run_due_jobs(self.uow, self.clock, self.jobs),
        }

    def start(self) -> None:
        self._wake.update({name: threading.Event() for name in self.loops()})
        for name, step in self.loops().items():
            thread = threading.Thread(
                target=self._loop, args=(name, step), name=f"careloop-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        if self.listen is not None:
            thread = threading.Thread(
                target=self.listen,
                args=(self._wake["relay"].set, self._stop),
                name="careloop-listen",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def _loop(self, name: str, step: Callable[[], int]) -> None:
        while not self._stop.is_set():
            self.give_way()
            if self._stop.is_set():  # stopped while giving way: no step after stop()
                return
            wake = self._wake.get(name)
            if wake is not None:
                wake.clear()  # before the step: work handed on during it still wakes us
            try:
                done = step()
            except Exception:  # a database hiccup must not end the loop
                log.exception("%s loop failed; retrying", name)
                done = 0
            if done:
                self._wake_next(name)
            elif wake is None:
                self._stop.wait(self._idle_wait(name))
            else:
                wake.wait(self._idle_wait(name))

    # What a loop's work hands on, in this worker: fired timers are events to relay,
    # relayed events may be webhooks to deliver. Woken, the next loop does not sleep out
    # its poll interval first.
    _NEXT = {"timers": "relay", "relay": "deliveries"}

    def _wake_next(self, name: str) -> None:
        wake = self._wake.get(self._NEXT.get(name, ""))
        if wake is not None:
            wake.set()

    def _idle_wait(self, name: str) -> float:
        """How long a loop that found nothing sleeps: the poll interval, except that the
        timer loop wakes when the next timer is due if that comes sooner."""
        if name != "timers":
            return self.poll_seconds
        try:
            until = seconds_until_due(self.uow, self.clock)
        except Exception:  # a database hiccup: poll as usual
            log.exception("looking up the next due timer failed")
            return self.poll_seconds
        if until is None:
            return self.poll_seconds
        # A floor, so a timer another worker holds does not make this loop spin.
        return min(self.poll_seconds, max(until, 0.01))

    def give_way(self) -> None:
        """Wait while the API is busy, but never longer than max_yield_seconds: under
        sustained load each loop still runs at least one step per interval (a relay batch,
        a timer batch), so automation slows down but never stops; the backlog a burst
        builds is worked off at full speed once requests pause."""
        if self.foreground is None or self.max_yield_seconds <= 0:
            return
        deadline = time.monotonic() + self.max_yield_seconds
        while self.foreground.busy() and time.monotonic() < deadline:
            if self._stop.wait(0.01):
                return

    def run_until_idle(self, max_rounds: int = 1000) -> int:
        """Run every loop until none has work left (tests and the demo)."""
        total = 0
        for _ in range(max_rounds):
            done = sum(step() for step in self.loops().values())
            total += done
            if not done:
                return total
        return total

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for wake in self._wake.values():
            wake.set()
        for thread in self._threads:
            thread.join(timeout)

    def wait(self) -> None:
        while any(thread.is_alive() for thread in self._threads):
            for thread in self._threads:
                thread.join(0.5)
