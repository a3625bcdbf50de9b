"""Timers on PostgreSQL: lateness under a steady stream, and firing throughput vs raw SQL.

(a) lateness, careloop only: N timers (default 100,000) planned through
    ``work.timers.plan_many`` in one transaction, due at start + uniform(0, 60 s) on the
    real system clock (start is a lead time after planning begins, long enough for the
    insert to commit first), on 20,000 case ids. Two worker processes, each a real
    ``careloop.engine.worker.Worker`` (relay, timers, deliveries and jobs loops in threads,
    the shipped poll interval, batch sizes as shipped) with one handler that records the
    events it sees. Lateness = ``timers.fired_at - due_at`` (fired: the firing
    transaction's clock reading) and ``outbox.published_at - due_at`` (handled by the
    relay). Checks: every timer fired, exactly one outbox row per timer (key
    ``timer:<id>``), every event published, handler calls vs events (at-least-once
    duplicates), worker loop errors.

(b) firing throughput with a backlog: N timers already due, drained by two processes;
    careloop: ``fire_due_timers(batch=500)`` in a loop (claim with FOR UPDATE SKIP LOCKED,
    one outbox row per timer, mark fired, commit); raw baseline: the same claim, outbox
    INSERT (executemany) and UPDATE through psycopg 3 on copies of the two tables (LIKE
    ... INCLUDING ALL, same rows), same batch, same two processes. Timers/s and the ratio.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

CASES = 20_000
BATCH = 500
WORKERS = 2


class _ErrorCount(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        self.first = self.first or record.getMessage()


def _timer_rows(n: int, prefix: str, start: datetime, span: float, seed: int
                ) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    return [{"case_id": 1 + rng.randrange(CASES), "kind": "state", "key": f"{prefix}:{i}",
             "name": "bench-follow-up", "due_at": start + timedelta(seconds=rng.uniform(0, span)),
             "payload": {"state": "documentation_review", "entered_at": now.isoformat()},
             "created_at": now} for i in range(n)]


def plan(app: Any, rows: list[dict[str, Any]]) -> float:
    """Plan ``rows`` in one transaction; returns when it committed (time.time())."""
    with app.deps.uow() as work:
        work.timers.plan_many(rows)
        work.commit()
    return time.time()


# --- (a) lateness -----------------------------------------------------------------------


def _worker_process(url: str, ready: Any, stop: Any, results: Any) -> None:
    """A careloop worker process: the real Worker loops, a handler that records events."""
    try:
        from careloop.adapters.webhooks import WebhookSender, signed_headers
        from careloop.engine.worker import Worker
        from careloop.services.ports import SystemClock

        errors = _ErrorCount()
        logging.getLogger("careloop").addHandler(errors)
        app = c.build_app(url, migrate=False, db_pool_size=4)
        seen: list[int] = []

        def record(work: Any, event: Any) -> None:
            if event["event_type"] == "timer.fired":
                seen.append(int(event["payload"]["timer_id"]))

        worker = Worker(uow=app.deps.uow, clock=SystemClock(), handlers=[record],
                        sender=WebhookSender(), sign=signed_headers,
                        poll_seconds=app.settings.worker_poll_seconds)
        worker.start()
        ready.put(app.settings.worker_poll_seconds)
        stop.wait()
        worker.stop()
        app.engine.dispose()
        results.put(("ok", seen, errors.count, errors.first))
    except Exception as error:  # report instead of leaving the parent waiting
        results.put(("error", repr(error), 0, None))


def _scalar(connection: Any, sql: str, *params: Any) -> Any:
    return connection.execute(sql, params).fetchone()[0]


def bench_lateness(url: str, n: int, span: float, lead: float) -> None:
    import psycopg

    print(f"-- (a) lateness: {n:,} timers due over {span:g} s, {WORKERS} worker processes --")
    app = c.build_app(url, migrate=False)
    ctx = mp.get_context("spawn")
    ready, results, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_worker_process, args=(url, ready, stop, results), daemon=True)
             for _ in range(WORKERS)]
    for proc in procs:
        proc.start()
    poll = [ready.get(timeout=120) for _ in procs].pop()
    begin = time.time()
    start = datetime.now(UTC) + timedelta(seconds=lead)
    committed = plan(app, _timer_rows(n, "bench-a", start, span, seed=1))
    margin = start.timestamp() - committed
    c.line("planned in one transaction (plan_many)",
           f"{committed - begin:.1f} s; committed {margin:.1f} s before the first due time")
    conninfo = c.pg_conninfo(url)
    deadline = start.timestamp() + span + 300
    with psycopg.connect(conninfo, autocommit=True) as connection:
        while time.time() < deadline:
            time.sleep(1.0)
            if time.time() < start.timestamp() + span:
                continue
            pending = _scalar(connection, "SELECT count(*) FROM timers WHERE status = 'pending' "
                              "AND key LIKE 'bench-a:%%'")
            unpublished = _scalar(connection, "SELECT count(*) FROM outbox WHERE "
                                  "published_at IS NULL AND event_type = 'timer.fired'")
            if not pending and not unpublished:
                break
        drained = time.time() - start.timestamp()
        stop.set()
        outcomes = [results.get(timeout=120) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
        failed = [o[1] for o in outcomes if o[0] == "error"]
        if failed:
            raise RuntimeError(f"a worker process failed: {failed[0]}")
        fired = [r[0] for r in connection.execute(
            "SELECT EXTRACT(EPOCH FROM fired_at - due_at)::float8 FROM timers "
            "WHERE key LIKE 'bench-a:%%' AND status = 'fired'")]
        published = [r[0] for r in connection.execute(
            "SELECT EXTRACT(EPOCH FROM o.published_at - t.due_at)::float8 FROM timers t "
            "JOIN outbox o ON o.idempotency_key = 'timer:' || t.id "
            "WHERE t.key LIKE 'bench-a:%%' AND o.published_at IS NOT NULL")]
        not_one = _scalar(connection, "SELECT count(*) FROM (SELECT t.id FROM timers t "
                          "LEFT JOIN outbox o ON o.idempotency_key = 'timer:' || t.id "
                          "WHERE t.key LIKE 'bench-a:%%' GROUP BY t.id "
                          "HAVING count(o.id) <> 1) x")
        early = sum(1 for x in fired if x < 0)
        unpublished = _scalar(connection, "SELECT count(*) FROM outbox WHERE "
                              "published_at IS NULL AND event_type = 'timer.fired'")
    app.engine.dispose()
    handled = [timer_id for o in outcomes for timer_id in o[1]]
    errors = sum(o[2] for o in outcomes)
    c.line(f"fired lateness ({len(fired):,} fired)",
           f"p50 {c.percentile(fired, 50) * 1000:.0f} ms, p99 "
           f"{c.percentile(fired, 99) * 1000:.0f} ms, max {max(fired, default=0) * 1000:.0f} ms")
    c.line(f"handled lateness ({len(published):,} published)",
           f"p50 {c.percentile(published, 50) * 1000:.0f} ms, p99 "
           f"{c.percentile(published, 99) * 1000:.0f} ms, max "
           f"{max(published, default=0) * 1000:.0f} ms")
    p99 = c.percentile(fired, 99)
    c.target_line("fired p99 < 1 s", p99 < 1.0, f"{p99 * 1000:.0f} ms")
    c.line("missed / not exactly one outbox row / early",
           f"{n - len(fired):,} / {not_one:,} / {early:,}")
    c.line("timer events still unpublished at the end", f"{unpublished:,}")
    c.line("handler calls / distinct timers handled",
           f"{len(handled):,} / {len(set(handled)):,} (duplicates: "
           f"{len(handled) - len(set(handled)):,})")
    first = next((o[3] for o in outcomes if o[3]), None)
    c.line("worker loop errors logged", f"{errors}" + (f" (first: {first})" if first else ""))
    state = "all fired and handled" if not unpublished else "gave up (deadline)"
    c.line(state + " after", f"{drained:.1f} s from the first due time "
           f"(poll interval {poll:g} s)")


# --- (b) throughput ---------------------------------------------------------------------


def _drain_careloop(url: str, ready: Any, go: Any, results: Any) -> None:
    try:
        from careloop.engine.timers import fire_due_timers
        from careloop.services.ports import SystemClock

        app = c.build_app(url, migrate=False, db_pool_size=2)
        clock = SystemClock()
        with app.engine.connect() as connection:  # connect before the start signal
            connection.exec_driver_sql("SELECT 1")
        ready.put(True)
        go.wait()
        total = 0
        while done := fire_due_timers(app.deps.uow, clock, BATCH):
            total += done
        results.put(("ok", total, time.time()))
        app.engine.dispose()
    except Exception as error:
        results.put(("error", repr(error), 0.0))


CLAIM = ("SELECT id, case_id, kind, name, due_at, payload FROM raw_timers "
         "WHERE status = 'pending' AND due_at <= %s ORDER BY due_at, id LIMIT %s "
         "FOR UPDATE SKIP LOCKED")
ADD_EVENT = ("INSERT INTO raw_outbox (case_id, event_type, payload, idempotency_key, "
             "created_at, available_at, attempts) VALUES (%s, 'timer.fired', %s, %s, %s, %s, 0)")
MARK = "UPDATE raw_timers SET status = 'fired', fired_at = %s WHERE id = ANY(%s)"


def _drain_raw(url: str, ready: Any, go: Any, results: Any) -> None:
    try:
        import psycopg
        from psycopg.types.json import Json

        connection = psycopg.connect(c.pg_conninfo(url))
        cursor = connection.cursor()
        ready.put(True)
        go.wait()
        total = 0
        while True:
            now = datetime.now(UTC)
            cursor.execute(CLAIM, (now, BATCH))
            rows = cursor.fetchall()
            if not rows:
                connection.rollback()
                break
            cursor.executemany(ADD_EVENT, [
                (case_id, Json({**payload, "timer_id": timer_id, "kind": "rule", "name": name,
                                "due_at": due_at.isoformat(), "case_id": case_id}),
                 f"timer:{timer_id}", now, now)
                for timer_id, case_id, _kind, name, due_at, payload in rows])
            cursor.execute(MARK, (now, [r[0] for r in rows]))
            connection.commit()
            total += len(rows)
        results.put(("ok", total, time.time()))
        connection.close()
    except Exception as error:
        results.put(("error", repr(error), 0.0))


def _drain(target: Any, url: str) -> tuple[int, float]:
    """Run ``target`` in WORKERS processes from one start signal; (timers, seconds)."""
    outcomes, t0 = c.run_processes(target, url, WORKERS, timeout=1800)
    return sum(o[1] for o in outcomes), max(o[2] for o in outcomes) - t0


def bench_throughput(url: str, n: int) -> None:
    import psycopg

    print(f"-- (b) firing throughput: {n:,} timers already due, {WORKERS} processes, "
          f"batch {BATCH} --")
    app = c.build_app(url, migrate=False)
    past = datetime.now(UTC) - timedelta(seconds=60)
    plan(app, _timer_rows(n, "bench-b", past, 60, seed=2))
    app.engine.dispose()
    with psycopg.connect(c.pg_conninfo(url), autocommit=True) as connection:
        for table in ("timers", "outbox"):
            connection.execute(f"CREATE TABLE raw_{table} (LIKE {table} INCLUDING ALL)")
            connection.execute(f"INSERT INTO raw_{table} SELECT * FROM {table}")
            connection.execute(f"VACUUM ANALYZE raw_{table}")
            connection.execute(f"VACUUM ANALYZE {table}")
    ours, ours_s = _drain(_drain_careloop, url)
    theirs, theirs_s = _drain(_drain_raw, url)
    with psycopg.connect(c.pg_conninfo(url), autocommit=True) as connection:
        left = _scalar(connection, "SELECT count(*) FROM timers WHERE status = 'pending'")
        raw_left = _scalar(connection, "SELECT count(*) FROM raw_timers WHERE status = 'pending'")
    c.line("careloop fire_due_timers", f"{ours / ours_s:8.0f} timers/s  ({ours:,} in "
           f"{ours_s:.1f} s; {left} left pending)")
    c.line("raw psycopg claim + insert + update", f"{theirs / theirs_s:8.0f} timers/s  "
           f"({theirs:,} in {theirs_s:.1f} s; {raw_left} left pending)")
    c.ratio_line("ratio careloop / raw", ours / ours_s, theirs / theirs_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timers", type=int, default=None, help="default 100,000")
    parser.add_argument("--span", type=float, default=60.0, help="seconds the due times span")
    parser.add_argument("--part", choices=("a", "b", "both"), default="both")
    args = c.parse_args(__doc__, parser)
    n = args.timers or (5_000 if args.quick else 100_000)
    span = min(args.span, 10.0) if args.quick else args.span
    c.header("timers: lateness and firing throughput", workers=WORKERS)
    problem = c.pg_problem()
    if problem:
        print(f"   skipped: PostgreSQL unreachable ({problem})")
        return
    with c.pg_schema("bench_timers") as url:
        app = c.build_app(url)
        app.engine.dispose()
        if args.part in ("a", "both"):
            bench_lateness(url, n, span, lead=max(5.0, n / 4000))
        if args.part in ("b", "both"):
            bench_throughput(url, n)


if __name__ == "__main__":
    main()
