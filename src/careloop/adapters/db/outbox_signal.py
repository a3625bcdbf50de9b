"""Committed outbox rows wake idle workers at once (PostgreSQL LISTEN/NOTIFY).

A transaction that leaves new pending outbox rows sends ``NOTIFY careloop_outbox``;
PostgreSQL delivers it when, and only if, the transaction commits. Each worker keeps one
more connection that LISTENs and wakes its relay loop. Without it an idle worker only
noticed new events at its next poll (``worker_poll_seconds``): an event waited up to
that long, or workers polled the outbox often and spent the database's time on it.

The signal only cuts a wait short. The relay still polls, so a notification missed
while the listening connection is down and not yet back delays an event by one poll
interval at most; it never loses one. Every careloop schema in a database shares the
channel: another installation's events wake a worker for nothing, which costs it one
empty claim.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy import Connection, Engine

log = logging.getLogger("careloop.outbox")
CHANNEL = "careloop_outbox"
APPLICATION_NAME = "careloop-listener"
# How often the listener looks up from its connection to see whether the worker stops.
WAIT_SECONDS = 0.5
RECONNECT_SECONDS = (0.5, 30.0)  # first delay, then doubled up to the last

# (wake the relay, stop) -> returns when stop is set.
Listener = Callable[[Callable[[], None], threading.Event], None]


def announce(connection: Connection) -> None:
    """Tell listening workers, once this transaction commits, that it left events to
    relay. Nothing on SQLite, whose worker shares the process and polls."""
    if connection.dialect.name == "postgresql":
        connection.connection.driver_connection.execute(f"NOTIFY {CHANNEL}")  # type: ignore[union-attr]


def outbox_listener(engine: Engine) -> Listener | None:
    """What a worker runs in a thread of its own to hear of committed events, or None
    on a database without LISTEN. It connects as the engine's pool does."""
    if engine.dialect.name != "postgresql":
        return None
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    # Named, so an operator tells it from the pool's connections in pg_stat_activity.
    cparams = {**cparams, "autocommit": True, "application_name": APPLICATION_NAME}

    def listen(wake: Callable[[], None], stop: threading.Event) -> None:
        delay = RECONNECT_SECONDS[0]
        while not stop.is_set():
            try:
                with psycopg.connect(*cargs, **cparams) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    delay = RECONNECT_SECONDS[0]
                    wake()  # what was committed while nobody listened
                    while not stop.is_set():
                        for _ in connection.notifies(timeout=WAIT_SECONDS):
                            wake()
            except Exception as error:  # the connection dropped: never end the thread
                log.warning(
                    "outbox listener lost its connection (%s); again in %.1f s", error, delay
                )
                stop.wait(delay)
                delay = min(delay * 2, RECONNECT_SECONDS[1])

    return listen
