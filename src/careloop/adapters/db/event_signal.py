"""Waiting for new outbox events on PostgreSQL: LISTEN to what the outbox announces.

Migration 0008 makes every transaction that adds a pending event NOTIFY
``careloop_events`` when it commits. A worker's relay waits on that instead of sleeping
out its poll interval: an event committed by the API, by another worker's timers or by
any other writer is picked up within milliseconds, and an idle worker costs the database
nothing. The poll interval stays as a backstop (a retry that comes due, a replayed dead
letter, a lost connection), so a missed notice delays work but never loses it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from sqlalchemy import Engine

log = logging.getLogger("careloop.worker")
CHANNEL = "careloop_events"


class EventSignal:
    """One listening connection; ``wait`` returns when an event was announced."""

    def __init__(self, engine: Engine) -> None:
        # libpq takes the URL as SQLAlchemy holds it, without the driver's name.
        url = engine.url.set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._connection: psycopg.Connection[Any] | None = None

    def wait(self, timeout: float) -> bool:
        """Up to ``timeout`` seconds for an announcement (True) or none (False). Notices
        that arrived meanwhile count: they are drained, so a burst wakes one step."""
        try:
            connection = self._connect()
            if any(True for _ in connection.notifies(timeout=timeout, stop_after=1)):
                # Drain the rest of a burst: one step will claim all that is ready.
                for _ in connection.notifies(timeout=0):
                    pass
                return True
            return False
        except psycopg.Error as error:
            log.warning("listening for new events failed (%s); polling meanwhile", error)
            self.close()
            time.sleep(timeout)
            return False

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _connect(self) -> psycopg.Connection[Any]:
        if self._connection is None or self._connection.closed:
            connection = psycopg.connect(self._conninfo, autocommit=True)
            connection.execute(f"LISTEN {CHANNEL}")
            self._connection = connection
        return self._connection

