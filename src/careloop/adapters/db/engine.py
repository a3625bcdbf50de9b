"""Engine creation: SQLite (WAL, durable commits, one writer at a time) or PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url


def make_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, echo)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    # No pre-ping and no reset-on-return: each costs a round trip per unit of work, and
    # the unit of work always ends its transaction itself. A dead connection fails the
    # use case (which rolls back) and the pool replaces it.
    return create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size,
        echo=echo,
        pool_reset_on_return=None,
        json_serializer=json_text,
    )


def _sqlite_engine(url: str, echo: bool) -> Engine:
    engine = create_engine(
        url,
        echo=echo,
        pool_size=8,
        max_overflow=8,
        connect_args={"check_same_thread": False, "timeout": 30},
        json_serializer=json_text,
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from pysqlite so BEGIN IMMEDIATE can be used.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed referral survives power loss, not only a crash.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        # Straight to the driver: this runs on every unit of work.
        dbapi_connection = connection.connection.dbapi_connection
        if connection.get_execution_options().get("careloop_read_only"):
            dbapi_connection.execute("BEGIN")  # WAL readers never wait for the writer
            return
        # Writers take the write lock up front: a read that later upgrades to a write
        # can fail with SQLITE_BUSY no matter how long it waits.
        dbapi_connection.execute("BEGIN IMMEDIATE")

    return engine


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def json_text(value: Any) -> str:
    """JSON column text: orjson (several times faster than json.dumps on a referral),
    compact and UTF-8. What it cannot encode (integers beyond 64 bits, non-string keys)
    goes to json.dumps, SQLAlchemy's default, which encodes or rejects it as before."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)
