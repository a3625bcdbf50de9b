"""The outbox relay: hands committed events to subscribers, at least once, in order.

Rows are claimed with FOR UPDATE SKIP LOCKED on PostgreSQL so any number of workers can
run; on SQLite the single writer lock serialises them. A failing handler leaves the
row pending with exponential backoff; it is never dropped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from careloop.services.ports import Clock, UnitOfWorkFactory

log = logging.getLogger("careloop.outbox")
Handler = Callable[[Mapping[str, Any]], None]


def backoff(attempts: int, base_seconds: float = 2.0, cap_seconds: float = 3600.0) -> timedelta:
    return timedelta(seconds=min(cap_seconds, base_seconds * (2**attempts)))


def log_event(event: Mapping[str, Any]) -> None:
    """The event-log subscriber: one line per committed event at DEBUG level."""
    log.debug(
        "event %s case=%s key=%s", event["event_type"], event["case_id"], event["idempotency_key"]
    )


def relay_once(
    uow: UnitOfWorkFactory, clock: Clock, handlers: list[Handler], batch: int = 100
) -> int:
    """Deliver one batch; returns how many rows were published."""
    published: list[int] = []
    with uow() as work:
        now = clock.now()
        for row in work.outbox.claim_pending(now, batch):
            try:
                for handler in handlers:
                    handler(row)
            except Exception as error:  # a subscriber's failure must not stop the relay
                log.warning("outbox %s failed: %s", row["id"], error)
                work.outbox.mark_failed(row["id"], repr(error), now + backoff(int(row["attempts"])))
                continue
            published.append(row["id"])
        work.outbox.mark_published(published, now)
        work.commit()
    if published:
        log.info("outbox delivered %d events", len(published))
    return len(published)


class OutboxWorker(threading.Thread):
    """Runs the relay in the background of `careloop serve`."""

    def __init__(
        self, uow: UnitOfWorkFactory, clock: Clock, handlers: list[Handler], poll_seconds: float
    ) -> None:
        super().__init__(name="careloop-outbox", daemon=True)
        self._uow, self._clock, self._handlers = uow, clock, handlers
        self._poll = poll_seconds
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                delivered = relay_once(self._uow, self._clock, self._handlers)
            except Exception:
                log.exception("outbox relay failed; retrying")
                delivered = 0
            if not delivered:
                self._stop_event.wait(self._poll)

    def stop(self) -> None:
        self._stop_event.set()
