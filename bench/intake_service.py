"""Intake through the service layer vs raw driver INSERTs, on SQLite and PostgreSQL.

careloop: ``careloop.services.cases.create_referral`` — one transaction writing the case
row, a case_history row, a hash-chained audit_log row (+ its audit_heads row, locked
with SELECT ... FOR UPDATE on PostgreSQL), and an outbox row; it also looks up the
latest workflow definition first. Referrals are validated once up front (validation is
the API layer's cost and is measured by bench/intake_http.py).

raw baseline: the same three INSERTs per transaction (case with a JSON payload, audit
row, outbox row) through the bare driver: ``sqlite3`` with careloop's pragmas (WAL,
synchronous=FULL, BEGIN IMMEDIATE), or psycopg 3. The raw tables copy careloop's column
types and indexes:

  raw_cases     bigint/INTEGER PK; data JSON (``json`` on PostgreSQL, as careloop);
                ix (state, clinic, specialty, created_at, id), (state, created_at, id),
                (assignee, state), (created_at, id)
  raw_audit_log PK (chain, seq); ix (case_id), (patient_ref), (occurred_at)
  raw_outbox    bigint/INTEGER PK; UNIQUE (idempotency_key);
                ix (published_at, available_at, id)

(a) SQLite: one loop in one thread for each side.
(b) PostgreSQL: N client processes (default 4) for each side, each with its own engine
    or connection, so the GIL does not distort either figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

POOL = 512  # distinct referral payloads cycled through


# --- raw schema ----------------------------------------------------------------------

RAW_SQLITE_DDL = """
CREATE TABLE raw_cases (
    id INTEGER PRIMARY KEY, case_type VARCHAR(50) NOT NULL,
    workflow_key VARCHAR(100) NOT NULL, workflow_version INTEGER NOT NULL,
    state VARCHAR(64) NOT NULL, version INTEGER NOT NULL, clinic VARCHAR(100) NOT NULL,
    specialty VARCHAR(100) NOT NULL, urgency VARCHAR(20) NOT NULL, payer VARCHAR(200),
    assignee VARCHAR(150), patient_ref VARCHAR(100), search_text TEXT NOT NULL,
    data JSON NOT NULL, created_by INTEGER NOT NULL, created_at DATETIME NOT NULL,
    updated_at DATETIME NOT NULL, state_entered_at DATETIME NOT NULL);
CREATE INDEX ix_raw_cases_queue ON raw_cases (state, clinic, specialty, created_at, id);
CREATE INDEX ix_raw_cases_state_created ON raw_cases (state, created_at, id);
CREATE INDEX ix_raw_cases_assignee_state ON raw_cases (assignee, state);
CREATE INDEX ix_raw_cases_created ON raw_cases (created_at, id);
CREATE TABLE raw_audit_log (
    chain INTEGER NOT NULL, seq BIGINT NOT NULL, occurred_at DATETIME NOT NULL,
    actor_id INTEGER NOT NULL, actor_name VARCHAR(150) NOT NULL,
    action VARCHAR(100) NOT NULL, outcome VARCHAR(20) NOT NULL, case_id BIGINT,
    patient_ref VARCHAR(100), data_category VARCHAR(50) NOT NULL,
    source_address VARCHAR(100) NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL,
    prev_hash VARCHAR(64) NOT NULL, hash VARCHAR(64) NOT NULL,
    PRIMARY KEY (chain, seq));
CREATE INDEX ix_raw_audit_log_case_id ON raw_audit_log (case_id);
CREATE INDEX ix_raw_audit_log_patient_ref ON raw_audit_log (patient_ref);
CREATE INDEX ix_raw_audit_log_occurred ON raw_audit_log (occurred_at);
CREATE TABLE raw_outbox (
    id INTEGER PRIMARY KEY, case_id BIGINT, event_type VARCHAR(100) NOT NULL,
    payload JSON NOT NULL, idempotency_key VARCHAR(200) NOT NULL UNIQUE,
    created_at DATETIME NOT NULL, available_at DATETIME NOT NULL,
    attempts INTEGER NOT NULL, published_at DATETIME, last_error TEXT);
CREATE INDEX ix_raw_outbox_pending ON raw_outbox (published_at, available_at, id);
"""

RAW_PG_DDL = (
    RAW_SQLITE_DDL.replace("id INTEGER PRIMARY KEY", "id BIGSERIAL PRIMARY KEY")
    .replace("DATETIME", "TIMESTAMPTZ")
    .replace("data JSON", "data json").replace("payload JSON", "payload json")
)

INSERT_CASE = (
    "INSERT INTO raw_cases (case_type, workflow_key, workflow_version, state, version, "
    "clinic, specialty, urgency, payer, assignee, patient_ref, search_text, data, "
    "created_by, created_at, updated_at, state_entered_at) "
    "VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})"
    " RETURNING id"
)
INSERT_AUDIT = (
    "INSERT INTO raw_audit_log (chain, seq, occurred_at, actor_id, actor_name, action, "
    "outcome, case_id, patient_ref, data_category, source_address, reason, detail, "
    "prev_hash, hash) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, "
    "{p}, {p}, {p})"
)
INSERT_OUTBOX = (
    "INSERT INTO raw_outbox (case_id, event_type, payload, idempotency_key, created_at, "
    "available_at, attempts) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})"
)


class RawIntake:
    """Builds the three rows of one intake the way a hand-written data layer would."""

    def __init__(self, chain: int, timestamp: Any, json_param: Any) -> None:
        self.chain, self.seq, self.prev_hash = chain, 0, "0" * 64
        self._ts, self._json = timestamp, json_param

    def case_row(self, payload: dict[str, Any]) -> tuple[Any, ...]:
        now = self._ts(datetime.now(UTC))
        self.now = now
        return ("referral", "referral-standard", 1, "intake_received", 1, payload["clinic"],
                payload["specialty"], payload["urgency"], payload["payer"]["name"], None,
                payload["patient"]["mrn"], c.search_text(payload), self._json(payload), 1,
                now, now, now)

    def audit_row(self, case_id: int, payload: dict[str, Any]) -> tuple[Any, ...]:
        self.seq += 1
        detail = "{}"
        digest = hashlib.sha256(self.prev_hash.encode())
        digest.update(json.dumps([self.chain, self.seq, str(self.now), case_id,
                                  payload["patient"]["mrn"], detail]).encode())
        entry_hash = digest.hexdigest()
        row = (self.chain, self.seq, self.now, 1, "bench", "case.create", "success", case_id,
               payload["patient"]["mrn"], "demographics", "", "", detail, self.prev_hash,
               entry_hash)
        self.prev_hash = entry_hash
        return row

    def outbox_row(self, case_id: int, payload: dict[str, Any]) -> tuple[Any, ...]:
        event = {"case_id": case_id, "case_type": "referral", "state": "intake_received",
                 "version": 1, "channel": payload["channel"], "urgency": payload["urgency"]}
        return (case_id, "case.created", self._json(event),
                f"case:{case_id}:v1:0:case.created", self.now, self.now, 0)


def _sqlite_ts(moment: datetime) -> str:
    # careloop's (SQLAlchemy's) SQLite DATETIME text form, UTC.
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


# --- careloop side --------------------------------------------------------------------


def _referrals() -> list[Any]:
    from careloop.services.referral_input import validate_referral

    return [validate_referral(c.referral_payload(i)) for i in range(POOL)]


def _actor() -> Any:
    from careloop.domain.access import Actor

    return Actor(user_id=1, username="bench", roles=frozenset({"administrator"}),
                 source_address="127.0.0.1")


def careloop_loop(app: Any, duration: float, warmup: int) -> tuple[int, list[float]]:
    from careloop.services.cases import create_referral

    referrals, actor, deps = _referrals(), _actor(), app.deps
    for i in range(warmup):
        create_referral(deps, actor, referrals[i % POOL])
    return _timed(lambda i: create_referral(deps, actor, referrals[i % POOL]), duration)


def _timed(step: Any, duration: float) -> tuple[int, list[float]]:
    latencies: list[float] = []
    clock = time.perf_counter
    start = clock()
    end = start + duration
    i = 0
    while True:
        t0 = clock()
        if t0 >= end:
            break
        step(i)
        latencies.append(clock() - t0)
        i += 1
    return i, latencies


def statements_per_intake(app: Any, n: int = 20) -> float:
    """How many SQL statements (BEGIN/COMMIT included) careloop sends per intake."""
    from sqlalchemy import event

    from careloop.services.cases import create_referral

    count = 0

    def _count(*_args: Any) -> None:
        nonlocal count
        count += 1

    def _count_tx(*_args: Any) -> None:
        nonlocal count
        count += 1  # COMMIT / ROLLBACK

    referrals, actor = _referrals()[:n], _actor()
    event.listen(app.engine, "before_cursor_execute", _count)
    event.listen(app.engine, "commit", _count_tx)
    event.listen(app.engine, "rollback", _count_tx)
    try:
        for referral in referrals:
            create_referral(app.deps, actor, referral)
    finally:
        event.remove(app.engine, "before_cursor_execute", _count)
        event.remove(app.engine, "commit", _count_tx)
        event.remove(app.engine, "rollback", _count_tx)
    return count / n


# --- (a) SQLite -------------------------------------------------------------------------


def raw_sqlite_loop(path: Path, duration: float, warmup: int) -> tuple[int, list[float]]:
    connection = c.sqlite_connect(path)
    connection.executescript(RAW_SQLITE_DDL)
    payloads = [c.referral_payload(i) for i in range(POOL)]
    intake = RawIntake(0, _sqlite_ts, json.dumps)
    insert_case = INSERT_CASE.format(p="?")
    insert_audit, insert_outbox = INSERT_AUDIT.format(p="?"), INSERT_OUTBOX.format(p="?")

    def step(i: int) -> None:
        payload = payloads[i % POOL]
        connection.execute("BEGIN IMMEDIATE")
        case_id = connection.execute(insert_case, intake.case_row(payload)).fetchone()[0]
        connection.execute(insert_audit, intake.audit_row(case_id, payload))
        connection.execute(insert_outbox, intake.outbox_row(case_id, payload))
        connection.execute("COMMIT")

    for i in range(warmup):
        step(i)
    try:
        return _timed(step, duration)
    finally:
        connection.close()


def bench_sqlite(duration: float, warmup: int) -> None:
    print("-- (a) SQLite, one client, WAL + synchronous=FULL --")
    with c.temp_dir("careloop-bench-") as tmp:
        app = c.build_app(f"sqlite:///{tmp / 'careloop.db'}")
        per_intake = statements_per_intake(app)
        count, lat = careloop_loop(app, duration, warmup)
        app.engine.dispose()
        careloop_tps = count / duration
        raw_count, raw_lat = raw_sqlite_loop(tmp / "raw.db", duration, warmup)
        raw_tps = raw_count / duration
    c.line("careloop create_referral", f"{careloop_tps:8.0f} tx/s  ({c.latency_ms(lat)})")
    c.line("raw sqlite3, 3 INSERTs per tx", f"{raw_tps:8.0f} tx/s  ({c.latency_ms(raw_lat)})")
    c.ratio_line("ratio careloop / raw", careloop_tps, raw_tps, target_pct=50)
    c.line("careloop SQL statements per intake", f"{per_intake:.1f} (raw: 5 incl. BEGIN/COMMIT)")


# --- (b) PostgreSQL --------------------------------------------------------------------


def _pg_worker(kind: str, url: str, index: int, duration: float, warmup: int,
               barrier: Any, results: Any) -> None:
    try:
        if kind == "careloop":
            app = c.build_app(url, migrate=False, db_pool_size=2)
            from careloop.services.cases import create_referral

            referrals, actor, deps = _referrals(), _actor(), app.deps
            offset = index * 7919

            def step(i: int) -> None:
                create_referral(deps, actor, referrals[(i + offset) % POOL])

            close = app.engine.dispose
        else:
            import psycopg
            from psycopg.types.json import Json

            connection = psycopg.connect(c.pg_conninfo(url))
            payloads = [c.referral_payload(i) for i in range(POOL)]
            intake = RawIntake(index, lambda moment: moment, Json)
            insert_case = INSERT_CASE.format(p="%s")
            insert_audit, insert_outbox = INSERT_AUDIT.format(p="%s"), INSERT_OUTBOX.format(p="%s")
            cursor = connection.cursor()

            def step(i: int) -> None:
                payload = payloads[i % POOL]
                cursor.execute(insert_case, intake.case_row(payload))
                case_id = cursor.fetchone()[0]  # type: ignore[index]
                cursor.execute(insert_audit, intake.audit_row(case_id, payload))
                cursor.execute(insert_outbox, intake.outbox_row(case_id, payload))
                connection.commit()

            close = connection.close
        for i in range(warmup):
            step(i)
        barrier.wait()
        count, latencies = _timed(step, duration)
        close()
        results.put((index, count, latencies, None))
    except Exception as error:  # report instead of hanging the parent at the barrier
        barrier.abort()
        results.put((index, 0, [], repr(error)))


def _run_pg(kind: str, url: str, clients: int, duration: float, warmup: int
            ) -> tuple[float, list[float]]:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(clients + 1), ctx.Queue()
    procs = [ctx.Process(target=_pg_worker, args=(kind, url, i, duration, warmup, barrier,
                                                  results)) for i in range(clients)]
    for proc in procs:
        proc.start()
    try:
        barrier.wait(timeout=120)
    except Exception:
        pass
    outcomes = [results.get(timeout=duration + 180) for _ in procs]
    for proc in procs:
        proc.join()
    errors = [error for *_, error in outcomes if error]
    if errors:
        raise RuntimeError(f"{kind} worker failed: {errors[0]}")
    latencies = [x for _, _, lat, _ in outcomes for x in lat]
    return sum(count for _, count, _, _ in outcomes) / duration, latencies


def bench_postgres(clients: int, duration: float, warmup: int) -> None:
    print(f"-- (b) PostgreSQL, {clients} client processes --")
    problem = c.pg_problem()
    if problem:
        print(f"   skipped: PostgreSQL unreachable ({problem})")
        return
    import psycopg

    with c.pg_schema("bench_intake") as url:
        app = c.build_app(url)
        per_intake = statements_per_intake(app)
        app.engine.dispose()
        with psycopg.connect(c.pg_conninfo(url), autocommit=True) as connection:
            for statement in RAW_PG_DDL.split(";"):
                if statement.strip():
                    connection.execute(statement)
        careloop_tps, lat = _run_pg("careloop", url, clients, duration, warmup)
        raw_tps, raw_lat = _run_pg("raw", url, clients, duration, warmup)
    c.line("careloop create_referral", f"{careloop_tps:8.0f} tx/s  ({c.latency_ms(lat)})")
    c.line("raw psycopg 3, 3 INSERTs per tx", f"{raw_tps:8.0f} tx/s  ({c.latency_ms(raw_lat)})")
    c.ratio_line("ratio careloop / raw", careloop_tps, raw_tps, target_pct=50)
    c.line("careloop SQL statements per intake",
           f"{per_intake:.1f} (raw: 4 + implicit BEGIN)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--clients", type=int, default=4, help="PostgreSQL client processes")
    parser.add_argument("--seconds", type=float, default=None, help="per measured phase")
    args = c.parse_args(__doc__, parser)
    duration = args.seconds or (1.0 if args.quick else 20.0)
    warmup = 20 if args.quick else 200
    random.seed(7)
    c.header("intake, service layer vs raw driver", seconds_per_phase=duration)
    if args.backend in ("sqlite", "both"):
        bench_sqlite(duration, warmup)
    if args.backend in ("postgres", "both"):
        bench_postgres(args.clients, duration, warmup)


if __name__ == "__main__":
    main()
