"""Engine creation: SQLite (WAL, durable commits, one writer at a time) or PostgreSQL."""

from __future__ import annotations

import json
import re
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
        json_deserializer=json_value,
    )


def _sqlite_engine(url: str, echo: bool) -> Engine:
    engine = create_engine(
        url,
        echo=echo,
        pool_size=8,
        max_overflow=8,
        connect_args={"check_same_thread": False, "timeout": 30},
        json_serializer=json_text,
        json_deserializer=json_value,
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


def json_value(text: str | bytes) -> Any:
    """A JSON column's value: orjson reads it in a fraction of json.loads' time (the
    relay loads every case of a batch). Where the two could differ, json.loads reads
    it, as before: orjson reads an integer past 64 bits as a float (such text has a run
    of 19 digits or more) and refuses NaN, Infinity and lone surrogates."""
    long = _LONG_NUMBER.search(text) if isinstance(text, str) else _LONG_BYTES.search(text)
    if long:
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


_LONG_NUMBER = re.compile(r"[0-9]{19}")
_LONG_BYTES = re.compile(rb"[0-9]{19}")
