"""Intake through the service layer vs raw driver INSERTs, on SQLite and PostgreSQL.

careloop: ``careloop.services.cases.create_referral`` — one transaction writing the case
row, a case_history row, a hash-chained audit_log row (+ its audit_heads row, advanced
by a conditional UPDATE from where this thread left it, or locked and read when another
writer moved it), and an outbox row, after looking up the latest workflow definition
(cached in memory for a few seconds). Referrals are validated once up front
(validation is the API layer's cost, measured by bench/intake_http.py).

raw baseline: the same three INSERTs per transaction (case with a JSON payload, audit
row, outbox row) through the bare driver: ``sqlite3`` with careloop's pragmas (WAL,
synchronous=FULL, BEGIN IMMEDIATE), or psycopg 3. The raw tables copy careloop's column
types and indexes:

  raw_cases     bigint/INTEGER PK; data JSON (``json`` on PostgreSQL, as careloop);
                ix (state, clinic, specialty, created_at, id), (state, created_at, id),
                (assignee, state), (created_at, id), (team, state), (created_by, id)
  raw_audit_log PK (chain, seq); ix (case_id), (patient_ref), (occurred_at)
  raw_outbox    bigint/INTEGER PK; UNIQUE (idempotency_key); ix (case_id, id), and
                partial: (case_id, id) and (id) of pending rows, (id) of dead ones

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

import _common as c

POOL = 512  # distinct referral payloads cycled through


# --- raw schema ----------------------------------------------------------------------

RAW_SQLITE_DDL = """
CREATE TABLE raw_cases (
    id INTEGER PRIMARY KEY, case_type VARCHAR(50) NOT NULL,
    workflow_key VARCHAR(100) NOT NULL, workflow_version INTEGER NOT NULL,
    state VARCHAR(64) NOT NULL, version INTEGER NOT NULL, clinic VARCHAR(100) NOT NULL,
    specialty VARCHAR(100) NOT NULL, urgency VARCHAR(20) NOT NULL, payer VARCHAR(200),
    assignee VARCHAR(150), team VARCHAR(100), patient_ref VARCHAR(100),
    search_text TEXT NOT NULL, data JSON NOT NULL, created_by INTEGER NOT NULL,
    created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL,
    state_entered_at DATETIME NOT NULL);
CREATE INDEX ix_raw_cases_queue ON raw_cases (state, clinic, specialty, created_at, id);
CREATE INDEX ix_raw_cases_state_created ON raw_cases (state, created_at, id);
CREATE INDEX ix_raw_cases_assignee_state ON raw_cases (assignee, state);
CREATE INDEX ix_raw_cases_created ON raw_cases (created_at, id);
CREATE INDEX ix_raw_cases_team_state ON raw_cases (team, state);
CREATE INDEX ix_raw_cases_created_by ON raw_cases (created_by, id);
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
    attempts INTEGER NOT NULL, published_at DATETIME, last_error TEXT, dead_at DATETIME);
CREATE INDEX ix_raw_outbox_case ON raw_outbox (case_id, id);
CREATE INDEX ix_raw_outbox_case_pending ON raw_outbox (case_id, id)
    WHERE published_at IS NULL AND dead_at IS NULL;
CREATE INDEX ix_raw_outbox_ready ON raw_outbox (id) WHERE published_at IS NULL AND dead_at IS NULL;
CREATE INDEX ix_raw_outbox_dead ON raw_outbox (id) WHERE dead_at IS NOT NULL;
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


# --- steppers: one intake per call ---------------------------------------------------


class Runner:
    """Runs one side's intakes; ``run(seconds)`` returns (count, latencies in s)."""

    def __init__(self, step: Any, close: Any, offset: int = 0) -> None:
        self._step, self.close, self._i = step, close, offset

    def run(self, seconds: float) -> tuple[int, list[float], float]:
        """(intakes, their latencies, CPU seconds this process spent)."""
        latencies: list[float] = []
        clock, step, i = time.perf_counter, self._step, self._i
        cpu = time.process_time()
        end = clock() + seconds
        while True:
            t0 = clock()
            if t0 >= end:
                break
            step(i)
            latencies.append(clock() - t0)
            i += 1
        count, self._i = i - self._i, i
        return count, latencies, time.process_time() - cpu

    def warm(self, n: int) -> None:
        for _ in range(n):
            self._step(self._i)
            self._i += 1


def _referrals() -> list[Any]:
    from careloop.services.referral_input import validate_referral

    return [validate_referral(c.referral_payload(i)) for i in range(POOL)]


def _actor() -> Any:
    from careloop.domain.access import Actor

    return Actor(user_id=1, username="bench", roles=frozenset({"administrator"}),
                 source_address="127.0.0.1")


def careloop_runner(url: str, *, migrate: bool, offset: int = 0) -> tuple[Runner, Any]:
    from careloop.services.cases import create_referral

    app = c.build_app(url, migrate=migrate, db_pool_size=4)
    referrals, actor, deps = _referrals(), _actor(), app.deps

    def step(i: int) -> None:
        create_referral(deps, actor, referrals[i % POOL])

    return Runner(step, app.engine.dispose, offset), app


def raw_sqlite_runner(path: Path) -> Runner:
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

    return Runner(step, connection.close)


def raw_pg_runner(url: str, index: int) -> Runner:
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

    return Runner(step, connection.close, index * 7919)


class Tally:
    def __init__(self) -> None:
        self.count, self.seconds, self.cpu = 0, 0.0, 0.0
        self.latencies: list[float] = []

    def add(self, count: int, latencies: list[float], cpu: float, seconds: float) -> None:
        self.count += count
        self.seconds += seconds
        self.latencies += latencies
        self.cpu += cpu

    @property
    def tps(self) -> float:
        return self.count / self.seconds if self.seconds else float("nan")

    def text(self) -> str:
        cpu_us = 1e6 * self.cpu / self.count if self.count else float("nan")
        return (f"{self.tps:8.0f} tx/s  ({c.latency_ms(self.latencies)}; "
                f"client CPU {cpu_us:.0f} us/tx)")


# --- (a) SQLite -------------------------------------------------------------------------


def bench_sqlite(rounds: int, seconds: float, warmup: int) -> None:
    print(f"-- (a) SQLite, one client, WAL + synchronous=FULL; {rounds} alternating rounds "
          f"of {seconds:g} s per side --")
    with c.temp_dir("careloop-bench-") as tmp:
        careloop, _app = careloop_runner(f"sqlite:///{tmp / 'careloop.db'}", migrate=True)
        raw = raw_sqlite_runner(tmp / "raw.db")
        careloop.warm(warmup)
        raw.warm(warmup)
        ours, theirs = Tally(), Tally()
        for _ in range(rounds):
            ours.add(*careloop.run(seconds), seconds)
            theirs.add(*raw.run(seconds), seconds)
        careloop.close()
        raw.close()
    c.line("careloop create_referral", ours.text())
    c.line("raw sqlite3, 3 INSERTs per tx", theirs.text())
    c.ratio_line("ratio careloop / raw", ours.tps, theirs.tps, target_pct=50)
    # careloop's transaction: BEGIN IMMEDIATE, case, history, audit head advance, audit
    # row, outbox, COMMIT (raw: BEGIN, 3 INSERTs, COMMIT).


# --- (b) PostgreSQL --------------------------------------------------------------------


def _pg_worker(kind: str, url: str, index: int, warmup: int, commands: Any,
               results: Any) -> None:
    """A client process: set up, warm up, then run timed phases on command."""
    try:
        if kind == "careloop":
            runner, _app = careloop_runner(url, migrate=False, offset=index * 7919)
        else:
            runner = raw_pg_runner(url, index)
        runner.warm(warmup)
        results.put((index, "ready", None))
        while (seconds := commands.get()) is not None:
            results.put((index, "done", runner.run(seconds)))
        runner.close()
    except Exception as error:  # report instead of leaving the parent waiting
        results.put((index, "error", repr(error)))


class ClientPool:
    """``clients`` processes of one kind, each with its own engine or connection."""

    def __init__(self, kind: str, url: str, clients: int, warmup: int) -> None:
        ctx = mp.get_context("spawn")
        self.kind, self.results = kind, ctx.Queue()
        self.commands = [ctx.Queue() for _ in range(clients)]
        self.procs = [ctx.Process(target=_pg_worker, args=(
            kind, url, i, warmup, self.commands[i], self.results), daemon=True)
            for i in range(clients)]
        for proc in self.procs:
            proc.start()

    def _collect(self, timeout: float) -> list[Any]:
        replies = [self.results.get(timeout=timeout) for _ in self.procs]
        errors = [value for _, status, value in replies if status == "error"]
        if errors:
            raise RuntimeError(f"a {self.kind} client failed: {errors[0]}")
        return [value for _, _, value in replies]

    def ready(self) -> None:
        self._collect(300)

    def run(self, seconds: float, tally: Tally) -> None:
        for queue in self.commands:
            queue.put(seconds)
        outcomes = self._collect(seconds + 120)
        tally.add(sum(n for n, _, _ in outcomes), [x for _, lat, _ in outcomes for x in lat],
                  sum(cpu for _, _, cpu in outcomes), seconds)

    def close(self) -> None:
        for queue in self.commands:
            queue.put(None)
        for proc in self.procs:
            proc.join(timeout=30)


def bench_postgres(clients: int, rounds: int, seconds: float, warmup: int) -> None:
    print(f"-- (b) PostgreSQL, {clients} client processes per side; {rounds} alternating "
          f"rounds of {seconds:g} s per side --")
    problem = c.pg_problem()
    if problem:
        print(f"   skipped: PostgreSQL unreachable ({problem})")
        return
    import psycopg

    with c.pg_schema("bench_intake") as url:
        runner, _app = careloop_runner(url, migrate=True)
        runner.warm(200)  # create every audit chain's head before counting
        runner.close()
        with psycopg.connect(c.pg_conninfo(url), autocommit=True) as connection:
            for statement in RAW_PG_DDL.split(";"):
                if statement.strip():
                    connection.execute(statement)
        pools = [ClientPool("careloop", url, clients, warmup),
                 ClientPool("raw", url, clients, warmup)]
        try:
            for pool in pools:
                pool.ready()
            ours, theirs = Tally(), Tally()
            for _ in range(rounds):
                pools[0].run(seconds, ours)
                pools[1].run(seconds, theirs)
        finally:
            for pool in pools:
                pool.close()
    c.line("careloop create_referral", ours.text())
    c.line("raw psycopg 3, 3 INSERTs per tx", theirs.text())
    c.ratio_line("ratio careloop / raw", ours.tps, theirs.tps, target_pct=50)
    # careloop's transaction: case + first history row (one statement), audit row + head
    # advance (one statement), outbox, COMMIT (raw: 3 INSERTs, COMMIT).


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--clients", type=int, default=4, help="PostgreSQL client processes")
    parser.add_argument("--rounds", type=int, default=None,
                        help="alternating careloop/raw rounds (evens out background load)")
    parser.add_argument("--seconds", type=float, default=None, help="per round and side")
    args = c.parse_args(__doc__, parser)
    rounds = args.rounds or (1 if args.quick else 4)
    seconds = args.seconds or (1.0 if args.quick else 5.0)
    warmup = 20 if args.quick else 200
    random.seed(7)
    c.header("intake, service layer vs raw driver")
    if args.backend in ("sqlite", "both"):
        bench_sqlite(rounds, seconds, warmup)
    if args.backend in ("postgres", "both"):
        bench_postgres(args.clients, rounds, seconds, warmup)


if __name__ == "__main__":
    main()
