"""Transitions that fire ten automation rules, end to end, vs the same writes by hand.

Setup (not timed): a fresh database (PostgreSQL schema, or SQLite file with
``--backend sqlite``), migrated; a rule set of ten rules on
``{on: transitioned, to: documentation_review}`` (five ``set_field``, five
``create_task``, six with a CEL condition that holds) stored as a new version of the
shipped ``referral-automation`` key through ``app.automation.store(..., activate=True)``,
so exactly these ten rules are active; R referrals (default 1,000) created through
``create_referral`` and their ``case.created`` events relayed until idle.

careloop (timed): all R referrals moved to documentation review from T threads (default
4), by ``transition_cases`` in batches of 200 (the bulk move a coordinator makes on a work
queue page, POST /api/v1/referrals/transitions; one transaction per batch, its writes
deferred to the commit), or with --single one ``transition_case`` per referral; this
process settles its heap first (``settle_heap``), as `careloop serve` does once started. The
outbox is relayed, on PostgreSQL, by P worker processes (default 2, one per core, as
`careloop worker` is deployed) that are started and idle before the clock starts and
relay while the transitions are made; on SQLite (or with --relay-processes 0) by W relay
threads (default 2) started after the transitions. Each relay has its own
``build_worker`` handlers (event log, Automation, integrations; batch size the worker's
unless --relay-batch) and calls ``relay_once`` like the worker's relay loop: when idle,
a worker process waits to be woken by a committed event (the worker's PostgreSQL
LISTEN, adapters/db/outbox_signal.py) or its poll interval, a relay thread polls every
2 ms. A process's end is when its last batch that relayed something ended.
The rule effects run in the relay: per rule its actions through the write path (case
update + audit, or task + audit), its outbox events and its automation_runs row, written
at the batch's end by the deferred-write buffer; the events the rules cause
(case.updated, case.task_added) are relayed too. Total = from the first transition until
every event is relayed. Printed with it: the CPU time each part used over the run (this
process, each relay process and, on a PostgreSQL server on this machine, its processes as
/proc shows them), and how long a plain Python loop takes here: together they tell a
busier or slower machine from a slower careloop.

raw baseline (timed the same way, same T threads on PostgreSQL, one thread on SQLite):
copies of cases, case_history, tasks, audit_log and outbox as they were before the timed
run (same columns, indexes and rows; a second schema, or a copy of the SQLite file); per
referral ONE transaction through the bare driver (psycopg 3 or sqlite3 with careloop's
pragmas): UPDATE the case (state, version, data), INSERT its history row, INSERT ten
effect rows (tasks), INSERT one audit row and one outbox row, COMMIT.

floor (PostgreSQL, timed the same way, same T threads, on a third schema): every row
careloop wrote in the timed run, as many of each per referral, written by hand the way
careloop batches them: per 200 referrals one transaction for the move (cases UPDATEd,
history, its audit row and pending event COPYed) and one for the rules' effects (cases
UPDATEd again, the old SLA timers cancelled and new ones COPYed, tasks, rule runs, audit
rows and events COPYed, the move's events marked published). No rule, hash, JSON or
check is computed: what is left of careloop's time above it is its own work, and where it
is near 1 s the target is out of this machine's reach for any code writing these rows.

Rounds (PostgreSQL; default 5): the whole of the above, setup included, on fresh schemas
each time. This machine's speed drifts by half from one minute to the next, the raw
baseline's with it, so one round samples a moment: every round is printed with the loop
time and raw figure of its moment, and the target is judged on the median round.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

RULES = """\
kind: rules
key: referral-automation
version: 90001
case_type: referral
title: Benchmark - ten rules on documentation review
rules:
  - key: review-queue
    trigger: {on: transitioned, to: documentation_review}
    actions: [{set_field: {field: queue, value: documentation-review}}]
  - key: review-team
    trigger: {on: transitioned, to: documentation_review}
    when: "case.clinic != ''"
    actions: [{set_field: {field: team, value: intake-team}}]
  - key: review-priority
    trigger: {on: transitioned, to: documentation_review}
    when: "size(case.diagnoses) > 0"
    actions: [{set_field: {field: priority, value: high}}]
  - key: review-group-number
    trigger: {on: transitioned, to: documentation_review}
    actions: [{set_field: {field: payer.group_number, value: G-100}}]
  - key: review-specialist
    trigger: {on: transitioned, to: documentation_review}
    when: "case.specialty != ''"
    actions: [{set_field: {field: specialist, value: dr.bench}}]
  - key: task-demographics
    trigger: {on: transitioned, to: documentation_review}
    actions:
      - create_task: {title: "Check demographics of {{ patient.family_name }}", due: 4 hours}
  - key: task-insurance
    trigger: {on: transitioned, to: documentation_review}
    when: "case.network_status == 'in_network'"
    actions: [{create_task: {title: "Verify {{ payer.name }} coverage", due: 1 business_days}}]
  - key: task-letter
    trigger: {on: transitioned, to: documentation_review}
    when: "!('referral_letter' in case.document_types)"
    actions: [{create_task: {title: "Request the referral letter", due: 2 hours}}]
  - key: task-diagnoses
    trigger: {on: transitioned, to: documentation_review}
    actions: [{create_task: {title: "Review diagnoses", due: 8 hours}}]
  - key: task-contact
    trigger: {on: transitioned, to: documentation_review}
    when: "case.age_hours >= 0.0"
    actions: [{create_task: {title: "Confirm contact {{ patient.phone }}", due: 1 days}}]
"""
RULE_COUNT, TASK_RULES, FIELD_RULES = 10, 5, 5
COPIED = ("cases", "case_history", "tasks", "audit_log", "outbox")
FLOOR_COPIED = (*COPIED, "automation_runs", "timers")
COUNTED = ("cases", "case_history", "tasks", "audit_log", "outbox", "automation_runs",
           "timers", "notifications")


def _actor() -> Any:
    from careloop.domain.access import Actor

    return Actor(user_id=1, username="bench", roles=frozenset({"administrator"}),
                 source_address="127.0.0.1")


def _in_threads(threads: int, items: list[Any], fn: Callable[[Any], Any]) -> list[float]:
    """Run ``fn`` over ``items`` from ``threads`` threads; returns per-item latencies."""
    latencies: list[float] = []
    lock = threading.Lock()
    source = iter(items)

    def worker() -> None:
        mine = []
        while True:
            with lock:
                item = next(source, None)
            if item is None:
                break
            t0 = time.perf_counter()
            fn(item)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(worker) for _ in range(threads)]:
            future.result()
    return latencies


# --- careloop -------------------------------------------------------------------------


class StatementClock:
    """Time spent in statements whose SQL starts with a given prefix (SQLAlchemy events;
    statements careloop sends straight to the driver are not seen)."""

    def __init__(self, engine: Any, prefixes: dict[str, str]) -> None:
        self.engine, self.prefixes = engine, prefixes
        self.spent = {label: [0, 0.0, 0.0] for label in prefixes}

    def _before(self, conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        conn.info["bench_t0"] = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        for label, prefix in self.prefixes.items():
            if sql.startswith(prefix):
                took = time.perf_counter() - conn.info["bench_t0"]
                entry = self.spent[label]
                entry[0], entry[1], entry[2] = entry[0] + 1, entry[1] + took, max(entry[2], took)

    def __enter__(self) -> StatementClock:
        from sqlalchemy import event

        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)
        return self

    def __exit__(self, *exc: object) -> None:
        from sqlalchemy import event

        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)


def counts(app: Any) -> dict[str, int]:
    with app.engine.connect() as connection:
        return {t: connection.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one()
                for t in COUNTED}


def relay_until_idle(app: Any, threads: int, batch: int | None = None) -> int:
    """W relay loops (each with its own worker's handlers) until nothing is claimable."""
    from careloop.bootstrap import build_worker
    from careloop.engine.outbox import relay_once

    workers = [build_worker(app) for _ in range(threads)]
    for worker in workers:
        worker.relay_batch = batch or worker.relay_batch
    idle = [False] * threads
    total = [0] * threads
    lock = threading.Lock()
    placeholder = "?" if app.engine.dialect.name == "sqlite" else "%s"
    ready = ("SELECT count(*) FROM outbox WHERE published_at IS NULL AND dead_at IS NULL "
             f"AND available_at <= {placeholder}")

    def loop(i: int) -> None:
        worker = workers[i]
        while True:
            done = relay_once(worker.uow, worker.clock, worker.handlers, worker.relay_batch,
                              prepare=worker.prepare)
            total[i] += done
            with lock:
                idle[i] = not done
                everyone_idle = all(idle)
            if done:
                continue
            if everyone_idle:
                now = worker.clock.now()
                if app.engine.dialect.name == "sqlite":
                    now = now.strftime("%Y-%m-%d %H:%M:%S.%f")
                with app.engine.connect() as connection:
                    if not connection.exec_driver_sql(ready, (now,)).scalar_one():
                        return
            time.sleep(0.002)

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(loop, i) for i in range(threads)]:
            future.result()
    return sum(total)


def _relay_process(url: str, batch: int | None, idle: Any, index: int, ready: Any, go: Any,
                   fed: Any, results: Any, release: Any) -> None:
    """One `careloop worker`-like process: relay loops, from the start signal until the
    transitions are all committed (``fed``) and nothing is claimable by anyone (``idle``
    holds every process's last claim: 1 = it found nothing). It reports its CPU time and
    keeps its database sessions open until ``release``, so that the parent can read what
    they used."""
    try:
        from careloop.bootstrap import build_worker, settle_heap
        from careloop.engine.outbox import relay_once

        app = c.build_app(url, migrate=False)
        worker = build_worker(app)
        worker.relay_batch = batch or worker.relay_batch
        settle_heap()  # as `careloop worker` does before it starts
        pending = ("SELECT count(*) FROM outbox WHERE published_at IS NULL AND dead_at IS NULL"
                   " AND available_at <= %s")
        # As the worker's relay loop: woken by committed events (LISTEN), else it polls.
        wake, stop = threading.Event(), threading.Event()
        assert worker.listen is not None
        threading.Thread(target=worker.listen, args=(wake.set, stop), daemon=True).start()
        if not wake.wait(30):  # set once listening
            raise RuntimeError("the outbox listener did not connect")
        ready.put(index)
        go.wait()
        cpu = time.process_time()
        total, finished = 0, time.perf_counter()
        while True:
            wake.clear()  # before the claim: an event committed during it still wakes us
            done = relay_once(worker.uow, worker.clock, worker.handlers, worker.relay_batch,
                              prepare=worker.prepare)
            total += done
            if done:
                finished = time.perf_counter()
            with idle.get_lock():
                idle[index] = 0 if done else 1
                everyone_idle = all(idle)
            if done:
                continue
            if everyone_idle and fed.is_set():
                with app.engine.connect() as connection:
                    if not connection.exec_driver_sql(pending,
                                                      (worker.clock.now(),)).scalar_one():
                        break
            wake.wait(worker.poll_seconds)
        stop.set()
        # When its last batch that relayed something ended, not its last idle poll
        # (CLOCK_MONOTONIC: one clock per machine).
        results.put(("ok", total, finished, time.process_time() - cpu))
        release.wait(60)
        app.engine.dispose()
    except Exception as error:  # reported to the parent, which fails the run
        results.put(("error", repr(error), 0.0, 0.0))


class RelayProcesses:
    """P spawned relay processes on PostgreSQL, running while the transitions are made,
    as deployed `careloop worker` processes would be."""

    def __init__(self, url: str, processes: int, batch: int | None) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.ready, self.results = ctx.Queue(), ctx.Queue()
        self.go, self.fed, self.release = ctx.Event(), ctx.Event(), ctx.Event()
        idle = ctx.Array("i", [0] * processes)
        self.procs = [ctx.Process(target=_relay_process, daemon=True, args=(
            url, batch, idle, i, self.ready, self.go, self.fed, self.results, self.release))
            for i in range(processes)]
        for proc in self.procs:
            proc.start()
        for _ in self.procs:
            self.ready.get(timeout=120)

    def finish(self) -> tuple[int, float, list[float]]:
        """After the transitions: (events relayed, when the last process went idle, each
        process's CPU seconds). Their database sessions stay open until ``close``."""
        self.fed.set()
        outcomes = [self.results.get(timeout=600) for _ in self.procs]
        failed = [o[1] for o in outcomes if o[0] == "error"]
        if failed:
            self.close()
            raise RuntimeError(f"a relay process failed: {failed[0]}")
        return sum(o[1] for o in outcomes), max(o[2] for o in outcomes), [o[3] for o in outcomes]

    def close(self) -> None:
        self.release.set()
        for proc in self.procs:
            proc.join(timeout=30)


def setup_careloop(url: str, referrals: int, threads: int) -> tuple[Any, list[tuple[int, int]]]:
    from careloop.services.cases import create_referral
    from careloop.services.referral_input import validate_referral

    app = c.build_app(url, db_pool_size=max(4, threads + 2))
    _, key, version, _ = app.automation.store(RULES, "bench/automation_e2e.py", "bench",
                                                 app.deps.clock.now(), activate=True)
    active = app.automation.current().rulesets["referral"]
    assert [(r.key, r.version) for r in active] == [(key, version)], active
    assert len(active[0].rules) == RULE_COUNT
    actor = _actor()
    inputs = [validate_referral(c.referral_payload(i)) for i in range(referrals)]
    _in_threads(threads, inputs, lambda r: create_referral(app.deps, actor, r))
    relay_until_idle(app, 2)
    with app.engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT id, version FROM cases WHERE state = 'intake_received' ORDER BY id").all()
    return app, [(int(i), int(v)) for i, v in rows]


BULK = 200  # the API's most items per bulk move


def run_careloop(app: Any, cases: list[tuple[int, int]], threads: int, relay_threads: int,
                 relay_batch: int | None = None, single: bool = False,
                 relay_processes: int = 0, url: str = "") -> dict[str, Any]:
    from careloop.bootstrap import settle_heap
    from careloop.services.cases import Move, transition_case, transition_cases

    actor = _actor()

    def move_batch(batch: list[tuple[int, int]]) -> None:
        results = transition_cases(app.deps, actor, [Move(i, "begin_review", v) for i, v in batch])
        failed = [r for r in results if isinstance(r, Exception)]
        assert not failed, failed[:3]

    before = counts(app)
    relays = RelayProcesses(url, relay_processes, relay_batch) if relay_processes else None
    settle_heap()  # this process serves the moves, as `careloop serve` does after start-up
    started = _cpu_readings(app)
    t0 = time.perf_counter()
    if relays is not None:
        relays.go.set()
    if single:
        latencies = _in_threads(threads, cases, lambda case: transition_case(
            app.deps, actor, case[0], "begin_review", case[1]))
    else:
        batches = [cases[i:i + BULK] for i in range(0, len(cases), BULK)]
        latencies = _in_threads(threads, batches, move_batch)
    t1 = time.perf_counter()
    spent = None  # statement times: seen only for relays in this process
    if relays is not None:
        relayed, t2, relay_cpu = relays.finish()
        cpu = {**_cpu_spent(app, started), "relays": relay_cpu}
        relays.close()
    else:
        prefixes = {"claim": "SELECT outbox.id", "savepoint": "SAVEPOINT"}
        with StatementClock(app.engine, prefixes) as statements:
            relayed = relay_until_idle(app, relay_threads, relay_batch)
            t2 = time.perf_counter()
        spent = statements.spent
        cpu = _cpu_spent(app, started)
    after = counts(app)
    return {"transitions": t1 - t0, "relay": t2 - t1, "total": t2 - t0, "latencies": latencies,
            "relayed": relayed, "written": {t: after[t] - before[t] for t in COUNTED},
            "statements": spent, "cpu": cpu}


def _cpu_readings(app: Any) -> tuple[float, dict[int, float] | None]:
    """CPU time used so far by this process and (on PostgreSQL) the server's processes."""
    on_postgres = app.engine.dialect.name == "postgresql"
    return time.process_time(), c.postgres_cpu_seconds() if on_postgres else None


def _cpu_spent(app: Any, started: tuple[float, dict[int, float] | None]) -> dict[str, Any]:
    """What was used since ``started``: this process (the moves and, without relay
    processes, the relay threads) and PostgreSQL (every session still open)."""
    serving, postgres = _cpu_readings(app)
    return {"serving": serving - started[0], "postgres": c.postgres_cpu_spent(started[1], postgres)}


def check_effects(app: Any, cases: list[tuple[int, int]]) -> list[str]:
    """Every referral moved, every rule applied once, its SLA clock replanned, nothing
    pending or dead."""
    problems = []
    ids = [i for i, _ in cases]
    with app.engine.connect() as connection:
        def scalar(sql: str) -> int:
            return int(connection.exec_driver_sql(sql).scalar_one())

        low, high = min(ids), max(ids)
        span = f"case_id BETWEEN {low} AND {high}"
        moved = scalar("SELECT count(*) FROM cases WHERE state = 'documentation_review' "
                       f"AND id BETWEEN {low} AND {high}")
        applied = scalar("SELECT count(*) FROM automation_runs WHERE outcome = 'applied' "
                         f"AND event_type = 'case.transitioned' AND {span}")
        other = scalar("SELECT count(*) FROM automation_runs WHERE outcome <> 'applied' "
                       f"AND event_type = 'case.transitioned' AND {span}")
        tasks = scalar(f"SELECT count(*) FROM tasks WHERE {span}")
        # The SLA clock of the new state runs (its first step planned), the old one stopped.
        # ('%%': the PostgreSQL driver's escape of a literal %; to SQLite's LIKE, two
        # wildcards match as one.)
        clocks = scalar("SELECT count(*) FROM timers WHERE status = 'pending' AND kind = 'sla' "
                        f"AND key LIKE 'sla:%%:documentation_review:%%' AND {span}")
        stale = scalar("SELECT count(*) FROM timers WHERE status = 'pending' "
                       f"AND key LIKE 'sla:%%:intake_received:%%' AND {span}")
        pending = scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        failed = scalar("SELECT count(*) FROM outbox WHERE last_error IS NOT NULL")
        queue = scalar("SELECT count(*) FROM cases WHERE data LIKE '%documentation-review%'"
                       if app.engine.dialect.name == "sqlite" else
                       "SELECT count(*) FROM cases WHERE data->>'queue' = "
                       "'documentation-review'")
    expected = len(ids)
    if moved != expected:
        problems.append(f"{moved}/{expected} referrals in documentation_review")
    if applied != expected * RULE_COUNT:
        problems.append(f"{applied} rule runs applied, expected {expected * RULE_COUNT}")
    if other:
        problems.append(f"{other} rule runs not applied (skipped/failed/stopped)")
    if tasks != expected * TASK_RULES:
        problems.append(f"{tasks} tasks, expected {expected * TASK_RULES}")
    if clocks != expected or stale:
        problems.append(f"SLA timers: {clocks} pending in documentation_review (expected "
                        f"{expected}), {stale} left pending from intake_received")
    if queue != expected:
        problems.append(f"{queue} referrals with queue set, expected {expected}")
    if pending or failed:
        problems.append(f"outbox: {pending} pending, {failed} with an error")
    return problems


# --- raw ----------------------------------------------------------------------------------


class RawTransition:
    """One referral's transition and its rule effects, written the way a hand-written data
    layer would: one transaction, one statement per row (the ten effect rows in one
    executemany)."""

    def __init__(self, p: str, json_param: Callable[[Any], Any], ts: Callable[[datetime], Any],
                 chain: int) -> None:
        self.p, self._json, self._ts, self.chain, self.seq = p, json_param, ts, chain, 0
        self.update_case = (
            f"UPDATE cases SET state = {p}, version = version + 1, data = {p}, "
            f"updated_at = {p}, state_entered_at = {p} WHERE id = {p} AND version = {p}")
        self.insert_history = (
            "INSERT INTO case_history (case_id, from_state, to_state, transition, actor_id, "
            f"actor_name, reason, occurred_at) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})")
        self.insert_task = (
            "INSERT INTO tasks (case_id, title, status, assignee, due_at, created_by, "
            f"created_at) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})")
        self.insert_audit = (
            "INSERT INTO audit_log (chain, seq, occurred_at, actor_id, actor_name, action, "
            "outcome, case_id, patient_ref, data_category, source_address, reason, detail, "
            f"prev_hash, hash) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, "
            f"{p}, {p}, {p}, {p})")
        self.insert_outbox = (
            "INSERT INTO outbox (case_id, event_type, payload, idempotency_key, created_at, "
            f"available_at, attempts) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})")
        self.data = {**c.referral_payload(0), "queue": "documentation-review",
                     "team": "intake-team", "priority": "high", "specialist": "dr.bench"}

    def statements(self, case_id: int, version: int) -> list[tuple[str, Any, bool]]:
        now = self._ts(datetime.now(UTC))
        self.seq += 1
        detail = json.dumps({"transition": "begin_review"})
        tasks = [(case_id, f"Rule task {n}", "open", None, now, 0, now) for n in range(10)]
        event = {"case_id": case_id, "state": "documentation_review", "version": version + 1,
                 "from": "intake_received", "to": "documentation_review"}
        return [
            (self.update_case, (("documentation_review", self._json(self.data), now, now,
                                 case_id, version)), False),
            (self.insert_history, (case_id, "intake_received", "documentation_review",
                                   "begin_review", 1, "bench", "", now), False),
            (self.insert_task, tasks, True),
            (self.insert_audit, (self.chain, self.seq, now, 1, "bench", "case.transition",
                                 "success", case_id, f"MRN{case_id}", "administrative",
                                 "", "", detail, "0" * 64, "f" * 64), False),
            (self.insert_outbox, (case_id, "case.transitioned", self._json(event),
                                  f"case:{case_id}:v{version + 1}:0:case.transitioned", now,
                                  now, 0), False),
        ]


def run_raw_pg(url: str, cases: list[tuple[int, int]], threads: int) -> dict[str, Any]:
    import psycopg
    from psycopg.types.json import Json

    local = threading.local()
    chains = iter(range(1000, 2000))
    connections: list[Any] = []

    def step(case: tuple[int, int]) -> None:
        if not hasattr(local, "connection"):
            local.connection = psycopg.connect(c.pg_conninfo(url))
            local.raw = RawTransition("%s", Json, lambda moment: moment, next(chains))
            connections.append(local.connection)
        cursor = local.connection.cursor()
        for sql, params, many in local.raw.statements(*case):
            if many:
                cursor.executemany(sql, params)
            else:
                cursor.execute(sql, params)
        local.connection.commit()

    t0 = time.perf_counter()
    latencies = _in_threads(threads, cases, step)
    total = time.perf_counter() - t0
    for connection in connections:
        connection.close()
    return {"total": total, "latencies": latencies}


def run_raw_sqlite(path: Path, cases: list[tuple[int, int]]) -> dict[str, Any]:
    connection = c.sqlite_connect(path)
    raw = RawTransition("?", json.dumps, lambda m: m.strftime("%Y-%m-%d %H:%M:%S.%f"), 1000)

    def step(case: tuple[int, int]) -> None:
        connection.execute("BEGIN IMMEDIATE")
        for sql, params, many in raw.statements(*case):
            if many:
                connection.executemany(sql, params)
            else:
                connection.execute(sql, params)
        connection.execute("COMMIT")

    t0 = time.perf_counter()
    latencies = _in_threads(1, cases, step)
    total = time.perf_counter() - t0
    connection.close()
    return {"total": total, "latencies": latencies}


@contextmanager
def raw_pg_copy(url: str, tables: tuple[str, ...] = COPIED,
                prefix: str = "bench_e2e_raw") -> Iterator[str]:
    """Another schema with copies of ``tables`` and their rows (as they are before the
    timed run)."""
    import psycopg

    source = url.rsplit("%3D", 1)[1]
    with c.pg_schema(prefix) as raw_url:
        target = raw_url.rsplit("%3D", 1)[1]
        with psycopg.connect(c.pg_conninfo(url), autocommit=True) as connection:
            for table in tables:
                connection.execute(f'CREATE TABLE "{target}".{table} '
                                   f'(LIKE "{source}".{table} INCLUDING ALL)')
                connection.execute(f'INSERT INTO "{target}".{table} '
                                   f'SELECT * FROM "{source}".{table}')
                connection.execute(f'ANALYZE "{target}".{table}')
        yield raw_url


class FloorWriter:
    """careloop's rows for a bulk move of referrals, written by hand (see the module's
    docstring): ``per`` holds how many rows of each table careloop wrote per referral."""

    def __init__(self, per: dict[str, int], chain: int) -> None:
        self.per, self.chain, self.seq = per, chain, 0
        self.data = json.dumps({**c.referral_payload(0), "queue": "documentation-review",
                                "team": "intake-team", "priority": "high"})

    def _audit(self, copy: Any, case_id: int, now: datetime, action: str) -> None:
        self.seq += 1
        copy.write_row((self.chain, self.seq, now, 0, "automation:bench", action, "success",
                        case_id, f"MRN{case_id}", "administrative", "", "", '{"fields":["queue"]}',
                        "0" * 64, "f" * 64))

    def move(self, cursor: Any, batch: list[tuple[int, int]], now: datetime) -> None:
        cursor.executemany(
            "UPDATE cases SET state = %s, version = version + 1, data = %s, updated_at = %s, "
            "state_entered_at = %s WHERE id = %s AND version = %s",
            [("documentation_review", self.data, now, now, i, v) for i, v in batch])
        with cursor.copy("COPY case_history (case_id, from_state, to_state, transition, "
                         "actor_id, actor_name, reason, occurred_at) FROM STDIN") as copy:
            for i, _ in batch:
                copy.write_row((i, "intake_received", "documentation_review", "begin_review",
                                1, "bench", "", now))
        with cursor.copy(_FLOOR_AUDIT) as copy:
            for i, _ in batch:
                self._audit(copy, i, now, "case.transition")
        with cursor.copy(_FLOOR_OUTBOX) as copy:
            for i, _ in batch:
                copy.write_row((i, "case.transitioned", '{"to":"documentation_review"}',
                                f"floor:{i}:moved", now, now, 0, None))

    def effects(self, cursor: Any, ids: list[int], now: datetime) -> None:
        per = self.per
        cursor.executemany("UPDATE cases SET version = version + 1, data = %s, updated_at = %s "
                           "WHERE id = %s", [(self.data, now, i) for i in ids])
        cursor.execute("UPDATE timers SET status = 'cancelled', fired_at = %s "
                       "WHERE case_id = ANY(%s) AND status = 'pending'", (now, ids))
        with cursor.copy("COPY timers (case_id, kind, key, name, due_at, status, payload, "
                         "created_at) FROM STDIN") as copy:
            for i in ids:
                for n in range(per["timers"]):
                    copy.write_row((i, "sla", f"floor:{i}:{n}", f"sla-{n}", now, "pending",
                                    '{"state":"documentation_review"}', now))
        with cursor.copy("COPY tasks (case_id, title, status, created_by, created_at, due_at) "
                         "FROM STDIN") as copy:
            for i in ids:
                for n in range(per["tasks"]):
                    copy.write_row((i, f"Rule task {n}", "open", 0, now, now))
        with cursor.copy("COPY automation_runs (case_id, event_key, event_type, rule_key, "
                         "ruleset_key, ruleset_version, depth, outcome, inputs, results, "
                         "created_at) FROM STDIN") as copy:
            for i in ids:
                for n in range(per["automation_runs"]):
                    copy.write_row((i, f"floor:{i}:moved", "case.transitioned", f"rule-{n}",
                                    "referral-automation", 90001, 0, "applied",
                                    '{"clinic":"riverside-clinic"}',
                                    '[{"action":"set_field","field":"queue","changed":true}]',
                                    now))
        with cursor.copy(_FLOOR_AUDIT) as copy:
            for i in ids:
                for _ in range(per["audit_log"] - 1):
                    self._audit(copy, i, now, "case.update")
        with cursor.copy(_FLOOR_OUTBOX) as copy:
            for i in ids:
                for n in range(per["outbox"] - 1):
                    copy.write_row((i, "case.updated", '{"fields":["queue"],"before":{}}',
                                    f"floor:{i}:{n}", now, now, 0, now))
        cursor.execute("UPDATE outbox SET published_at = %s, attempts = attempts + 1 "
                       "WHERE idempotency_key = ANY(%s)", (now, [f"floor:{i}:moved" for i in ids]))


_FLOOR_AUDIT = ("COPY audit_log (chain, seq, occurred_at, actor_id, actor_name, action, outcome, "
                "case_id, patient_ref, data_category, source_address, reason, detail, prev_hash, "
                "hash) FROM STDIN")
_FLOOR_OUTBOX = ("COPY outbox (case_id, event_type, payload, idempotency_key, created_at, "
                 "available_at, attempts, published_at) FROM STDIN")


def run_floor_pg(url: str, cases: list[tuple[int, int]], threads: int,
                 written: dict[str, int]) -> dict[str, Any]:
    import psycopg

    per = {table: round(written[table] / len(cases)) for table in FLOOR_COPIED[1:]}
    local = threading.local()
    chains = iter(range(2000, 3000))
    connections: list[Any] = []

    def step(batch: list[tuple[int, int]]) -> None:
        if not hasattr(local, "connection"):
            local.connection = psycopg.connect(c.pg_conninfo(url))
            local.writer = FloorWriter(per, next(chains))
            connections.append(local.connection)
        now = datetime.now(UTC)
        cursor = local.connection.cursor()
        local.writer.move(cursor, batch, now)
        local.connection.commit()
        local.writer.effects(cursor, [i for i, _ in batch], now)
        local.connection.commit()

    batches = [cases[i:i + BULK] for i in range(0, len(cases), BULK)]
    client, server = time.process_time(), c.postgres_cpu_seconds()
    t0 = time.perf_counter()
    _in_threads(threads, batches, step)
    total = time.perf_counter() - t0
    client, server_after = time.process_time() - client, c.postgres_cpu_seconds()
    for connection in connections:  # after the reading: a closed session is not counted
        connection.close()
    postgres = c.postgres_cpu_spent(server, server_after)
    return {"total": total, "per": per, "client": client, "postgres": postgres}


def raw_sqlite_copy(path: Path, target: Path) -> None:
    """A copy of the careloop database as it is before the timed run."""
    import sqlite3

    with sqlite3.connect(path) as source, sqlite3.connect(target) as copy:
        source.backup(copy)  # includes what is still in the WAL


# --- driver ---------------------------------------------------------------------------------


def report(ours: dict[str, Any], raw: dict[str, Any], referrals: int, threads: int,
           relays: str, backend: str, single: bool, judge: bool = True) -> None:
    """One run's figures; ``judge``: with the target's verdict (PostgreSQL gives its
    verdict on the median of its rounds instead)."""
    how = "one per call" if single else f"bulk moves of {BULK}"
    c.line(f"careloop: {referrals:,} transitions ({how}), {threads} threads",
           f"{ours['transitions']:.2f} s  ({c.latency_ms(ours['latencies'])})")
    c.line(f"careloop: relay idle after them, {relays}",
           f"{ours['relay']:.2f} s more  ({ours['relayed']:,} events)")
    if ours["statements"] is not None:
        claims, savepoints = ours["statements"]["claim"], ours["statements"]["savepoint"]
        c.line("   in relay: claim queries (summed over threads)",
               f"{claims[1]:.2f} s ({claims[0]} claims, slowest {claims[2]:.2f} s)")
        c.line("   in relay: SAVEPOINT statements",
               f"{savepoints[1]:.2f} s ({savepoints[0]:,}; RELEASE not counted)")
    if judge:
        c.target_line("careloop total, target < 1 s", ours["total"] < 1.0,
                      f"{ours['total']:.2f} s")
    else:
        c.line("careloop total", f"{ours['total']:.2f} s")
    c.line("   CPU it used (core-seconds)", _cpu_text(ours["cpu"], ours["total"]))
    written = ", ".join(f"{t} {n:,}" for t, n in ours["written"].items() if n)
    c.line("   rows careloop wrote (net)", written)
    label = f"raw {backend}: 1 tx per referral, 14 rows"
    c.line(label, f"{raw['total']:.2f} s  ({c.latency_ms(raw['latencies'])})")
    c.ratio_line("ratio careloop / raw (total time)", ours["total"], raw["total"],
                 higher_is_better=False)
    c.ratio_line("throughput careloop / raw", referrals / ours["total"],
                 referrals / raw["total"])


def _cpu_text(cpu: dict[str, Any], wall: float) -> str:
    """Where the CPU went: with the cores all busy, the total is what a faster run needs
    less of (a run that waited instead would show idle cores)."""
    parts = []
    if "relays" in cpu:
        parts.append("relay processes " + " + ".join(f"{s:.2f}" for s in cpu["relays"]))
    parts.append(f"this process {cpu['serving']:.2f}")
    if cpu["postgres"] is not None:
        parts.append(f"PostgreSQL {cpu['postgres']:.2f}")
    used = sum(cpu.get("relays", ())) + cpu["serving"] + (cpu["postgres"] or 0.0)
    cores = os.cpu_count() or 1
    return (f"{', '.join(parts)}; {used:.2f} in all, "
            f"{100 * used / (wall * cores):.0f} % of {cores} CPUs over the run")


def postgres_round(referrals: int, threads: int, relay_threads: int, relay_batch: int | None,
                   single: bool, relay_processes: int) -> dict[str, Any]:
    """One round on fresh schemas: careloop, then raw and floor on copies of its tables."""
    speed = c.python_speed()
    with c.pg_schema("bench_e2e") as url:
        app, cases = setup_careloop(url, referrals, threads)
        try:
            with raw_pg_copy(url) as raw_url, \
                    raw_pg_copy(url, FLOOR_COPIED, "bench_e2e_floor") as floor_url:
                ours = run_careloop(app, cases, threads, relay_threads, relay_batch, single,
                                    relay_processes, url)
                problems = check_effects(app, cases)
                raw = run_raw_pg(raw_url, cases, threads)
                floor = run_floor_pg(floor_url, cases, threads, ours["written"])
        finally:
            app.engine.dispose()
    return {"ours": ours, "raw": raw, "floor": floor, "problems": problems, "speed": speed}


def bench_postgres(referrals: int, threads: int, relay_threads: int,
                   relay_batch: int | None, single: bool, relay_processes: int,
                   rounds: int) -> None:
    print(f"-- PostgreSQL: {referrals:,} referrals, {RULE_COUNT} rules on "
          f"documentation_review, {rounds} round(s) --")
    problem = c.pg_problem()
    if problem:
        print(f"   skipped: PostgreSQL unreachable ({problem})")
        return
    # Each round on fresh schemas. A shared machine's speed drifts from minute to minute
    # (the loop time and the raw baseline show it): one round is a sample of that moment,
    # the median round is the figure, and every round is printed.
    results = [postgres_round(referrals, threads, relay_threads, relay_batch, single,
                              relay_processes) for _ in range(rounds)]
    for n, result in enumerate(results, 1):
        ours, raw, floor = result["ours"], result["raw"], result["floor"]
        c.line(f"round {n}: careloop total (loop {result['speed']:.2f} s)",
               f"{ours['total']:.2f} s; raw {raw['total']:.2f} s "
               f"({ours['total'] / raw['total']:.2f}x), floor {floor['total']:.2f} s "
               f"({ours['total'] / floor['total']:.2f}x)"
               + ("" if not result["problems"] else "; EFFECTS MISSING"))
    totals = [result["ours"]["total"] for result in results]
    middle = sorted(results, key=lambda result: result["ours"]["total"])[(rounds - 1) // 2]
    print(f"   the median round{' (the lower middle: an even count)' if rounds % 2 == 0 else ''}:")
    ours, raw, floor = middle["ours"], middle["raw"], middle["floor"]
    relays = (f"{relay_processes} worker processes running throughout" if relay_processes
              else f"{relay_threads} threads started after them")
    report(ours, raw, referrals, threads, relays, "psycopg", single, judge=False)
    per = ", ".join(f"{t} {n}" for t, n in floor["per"].items())
    c.line("floor: careloop's rows by hand, batched alike",
           f"{floor['total']:.2f} s  (per referral: {per})")
    if floor["postgres"] is not None:
        c.line("   CPU it used (core-seconds)",
               f"this process {floor['client']:.2f}, PostgreSQL {floor['postgres']:.2f}")
    c.ratio_line("ratio careloop / floor (total time)", ours["total"], floor["total"],
                 higher_is_better=False, baseline_name="floor")
    missing = [f"round {n}: {'; '.join(r['problems'])}"
               for n, r in enumerate(results, 1) if r["problems"]]
    c.line("   effects check", " | ".join(missing) if missing else
           f"all rule effects present in {'every round' if rounds > 1 else 'the round'}")
    met = sum(total < 1.0 for total in totals)
    c.target_line(f"careloop total, median of {rounds}, target < 1 s", ours["total"] < 1.0,
                  f"{ours['total']:.2f} s (under 1 s in {met} of {rounds} rounds; "
                  f"{min(totals):.2f}-{max(totals):.2f} s)")


def bench_sqlite(referrals: int, threads: int, relay_threads: int,
                 relay_batch: int | None, single: bool) -> None:
    print(f"-- SQLite (WAL, synchronous=FULL): {referrals:,} referrals, {RULE_COUNT} rules on "
          "documentation_review --")
    with c.temp_dir("careloop-bench-e2e-") as tmp:
        path = tmp / "careloop.db"
        app, cases = setup_careloop(f"sqlite:///{path}", referrals, threads)
        raw_sqlite_copy(path, tmp / "raw.db")
        try:
            ours = run_careloop(app, cases, threads, relay_threads, relay_batch, single)
            problems = check_effects(app, cases)
        finally:
            app.engine.dispose()
        raw = run_raw_sqlite(tmp / "raw.db", cases)
    report(ours, raw, referrals, threads, f"{relay_threads} threads started after them",
           "sqlite3 (1 thread)", single)
    c.line("   effects check", "; ".join(problems) if problems else "all rule effects present")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("postgres", "sqlite", "both"), default="postgres")
    parser.add_argument("--referrals", type=int, default=None, help="default 1,000")
    parser.add_argument("--threads", type=int, default=4, help="transition threads")
    parser.add_argument("--relay-processes", type=int, default=2,
                        help="PostgreSQL: worker processes relaying while the transitions "
                             "are made (0: --relay-threads after them, in this process)")
    parser.add_argument("--relay-threads", type=int, default=2)
    parser.add_argument("--relay-batch", type=int, default=None,
                        help="events per relay batch (default: the worker's)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="PostgreSQL: rounds on fresh schemas, the median reported "
                             "(default 5; 1 with --quick)")
    parser.add_argument("--single", action="store_true",
                        help="one transition_case per referral instead of bulk moves")
    args = c.parse_args(__doc__, parser)
    referrals = args.referrals or (100 if args.quick else 1_000)
    c.header("automation end to end: transitions + rule effects vs raw writes")
    c.line("machine: a pure-Python loop of 10 M additions", f"{c.python_speed():.2f} s")
    if args.backend in ("postgres", "both"):
        bench_postgres(referrals, args.threads, args.relay_threads, args.relay_batch,
                       args.single, args.relay_processes, args.rounds or (1 if args.quick else 5))
    if args.backend in ("sqlite", "both"):
        bench_sqlite(referrals, args.threads, args.relay_threads, args.relay_batch, args.single)


if __name__ == "__main__":
    main()
