"""The outbox relay: hands committed events to subscribers, at least once, in order.

Rows are claimed with FOR UPDATE SKIP LOCKED on PostgreSQL so any number of workers can
run; on SQLite the single writer lock serialises them. Subscribers run inside the
relay's transaction, each event isolated from the others (see relay_once): an event's
effects (rule actions, timers, webhook deliveries) commit together with marking it
published, so a crash repeats the whole event or none of it, never half. A failing
event is retried with exponential backoff and jitter and dead-lettered when the schedule
is exhausted; a later event of the same case waits behind it (per-case order) until it
is delivered or dead, in the same batch as in later ones.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from careloop.services.ports import Clock, OptimisticAbort, UnitOfWork, UnitOfWorkFactory

log = logging.getLogger("careloop.outbox")
Handler = Callable[[UnitOfWork, Mapping[str, Any]], None]
# Called once per claimed batch before its events are handled, to load in one go what
# the handlers will read one event at a time (the automation's cases).
Preparer = Callable[[UnitOfWork, Sequence[Mapping[str, Any]]], None]
# Events whose handlers act outside the database (careloop.engine.worker.call_integrations).
EXTERNAL_EVENTS = frozenset({"integration.requested"})
MAX_ATTEMPTS = 10  # 2 s, 4 s ... ~17 min: about half an hour in all, then the dead-letter queue


def backoff(
    attempts: int,
    rng: random.Random | None = None,
    base_seconds: float = 2.0,
    cap_seconds: float = 3600.0,
) -> timedelta:
    """Exponential backoff with ±20% jitter so failing workers do not retry in lockstep."""
    delay = min(cap_seconds, base_seconds * (2**attempts))
    jitter = (rng or random).uniform(0.8, 1.2)
    return timedelta(seconds=delay * jitter)


def retry_at(attempts: int, now: datetime, max_attempts: int = MAX_ATTEMPTS) -> datetime | None:
    """When to try again after ``attempts`` failures, or None: dead-letter it."""
    if attempts + 1 >= max_attempts:
        return None
    return now + backoff(attempts)


def log_event(work: UnitOfWork, event: Mapping[str, Any]) -> None:
    """The event-log subscriber: one line per committed event at DEBUG level."""
    log.debug(
        "event %s case=%s key=%s", event["event_type"], event["case_id"], event["idempotency_key"]
    )


def relay_once(
    uow: UnitOfWorkFactory,
    clock: Clock,
    handlers: list[Handler],
    batch: int = 100,
    max_attempts: int = MAX_ATTEMPTS,
    prepare: Preparer | None = None,
) -> int:
    """Deliver one batch; returns how many rows were published.

    The batch is first tried optimistically, without a savepoint per event or per rule,
    its writes deferred to a few statements per table (adapters/db/write_buffer.py):
    almost every batch succeeds whole. If anything in it fails, the batch is rolled back
    and delivered again with savepoints, so one failing event still cannot hold back
    the others.
    """
    try:
        published = _relay_batch(
            uow, clock, handlers, batch, max_attempts, prepare, optimistic=True
        )
    except OptimisticAbort as error:
        log.debug("outbox batch failed optimistically (%s); again with savepoints", error)
        published = _relay_batch(
            uow, clock, handlers, batch, max_attempts, prepare, optimistic=False
        )
    if published:
        log.info("outbox delivered %d events", published)
    return published


def _relay_batch(
    uow: UnitOfWorkFactory,
    clock: Clock,
    handlers: list[Handler],
    batch: int,
    max_attempts: int,
    prepare: Preparer | None,
    optimistic: bool,
) -> int:
    published: list[int] = []
    with uow() as work:
        now = clock.now()
        rows = work.outbox.claim_pending(now, batch)
        # A handler that calls out of the database (an integration port) must not run
        # twice because another event of its batch failed: such batches go carefully.
        work.optimistic = optimistic and not any(
            row["event_type"] in EXTERNAL_EVENTS for row in rows
        )
        if prepare is not None and rows:
            prepare(work, rows)
        if work.optimistic:
            work.outbox.capture()
        held: set[int] = set()  # cases with a failed event: their later events wait
        for row in rows:
            if row["case_id"] in held:
                continue
            try:
                with work.savepoint():
                    for handler in handlers:
                        handler(work, row)
            except OptimisticAbort:
                raise
            except Exception as error:  # one event's failure must not stop the relay
                attempts = int(row["attempts"])
                when = retry_at(attempts, now, max_attempts)
                if when is None:
                    log.error(
                        "outbox %s dead-lettered after %d attempts: %r",
                        row["id"],
                        attempts + 1,
                        error,
                    )
                else:
                    log.warning("outbox %s failed (attempt %d): %r", row["id"], attempts + 1, error)
                work.outbox.mark_failed(row["id"], repr(error), when, now)
                if row["case_id"] is not None:
                    held.add(row["case_id"])
                continue
            published.append(row["id"])
        caused = _relay_caused(work, handlers, rows, now, batch) if work.optimistic else 0
        work.outbox.mark_published(published, now)
        work.commit()
    return len(published) + caused


def _relay_caused(
    work: UnitOfWork,
    handlers: list[Handler],
    claimed: list[dict[str, Any]],
    now: datetime,
    batch: int,
) -> int:
    """Handle the events the batch's handlers caused (a rule's case.updated and
    case.task_added...) in the same transaction, and write them already published:
    otherwise each would be claimed, handled and marked by a later batch of its own,
    for the most part only to find no rule listening.

    Per-case order holds: they are handled after every claimed event, in the order
    they were caused, and only for cases with no other pending event (one held back by
    a retry, claimed by another worker or added meanwhile), which stay pending in line
    behind it. Only optimistic batches do this, whose failure re-runs the whole batch
    carefully; integration calls leave the database and wait for their own batch. At
    most ``batch`` times ten are handled; the rest wait for later batches."""
    claimed_ids = {row["id"] for row in claimed}
    probed: set[int] = set()
    waiting: set[int] = set()
    queue: deque[dict[str, Any]] = deque()

    def take() -> None:
        caused = work.outbox.take_caused()
        fresh = {row["case_id"] for row in caused if row["case_id"] is not None} - probed
        if fresh:
            waiting.update(work.outbox.cases_waiting(fresh, claimed_ids))
            probed.update(fresh)
        queue.extend(caused)

    take()
    handled: list[dict[str, Any]] = []
    while queue and len(handled) < batch * 10:
        row = queue.popleft()
        case_id = row["case_id"]
        if case_id is None or case_id in waiting or row["event_type"] in EXTERNAL_EVENTS:
            if case_id is not None:
                waiting.add(case_id)  # its later events queue behind this one
            continue
        event = {**row, "id": None}
        with work.savepoint():
            for handler in handlers:
                handler(work, event)
        handled.append(row)
        take()
    work.outbox.publish_caused(handled, now)
    return len(handled)
