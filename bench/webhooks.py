"""Webhook delivery and outbox claiming throughput, careloop vs raw loops.

(a) delivery: N pending deliveries (default 2,000; Standard Webhooks bodies of a
    case.transitioned event, ~330 bytes) for one subscription pointing at a local
    receiver: uvicorn with a trivial ASGI app in its own process, HTTP/1.1 keep-alive,
    answering 204 and counting requests and distinct ``webhook-id`` headers.
    careloop: ``deliver_once`` (lease a batch of 50 as the worker does, sign each with
    ``signed_headers``, send through ``WebhookSender(allow_private=True)``, record each
    attempt and outcome) in a loop on one thread, as the worker's deliveries loop runs.
    raw baseline: one ``httpx.Client`` POSTing the same bodies to the same receiver over
    keep-alive connections, in a loop (no database, no signing). The sides alternate,
    R rounds each (default 2), fresh deliveries every round.
    Database: PostgreSQL, or SQLite with ``--backend sqlite``.

(b) outbox claiming, PostgreSQL: E events (default 50,000) pre-inserted across C case ids
    (default 10,000, so 5 events per case, in id order), drained by two processes.
    careloop: ``relay_once(batch=500)`` with one no-op handler that records what it saw
    (claim with FOR UPDATE SKIP LOCKED and per-case order, a savepoint per event, one
    UPDATE marking the batch published, commit). raw baseline: the same claim query
    (same per-case-order condition) and the same UPDATE through psycopg 3 on a copy of
    the table (LIKE ... INCLUDING ALL, same rows), the handler called per row, no
    savepoints. Events/s and the ratio; checks: all published, handler calls per event,
    per-case order (no event handled before an earlier one of its case).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
from automation_e2e import StatementClock

WORKERS = 2

# --- the receiver ---------------------------------------------------------------------


class Receiver:
    """A trivial ASGI app: 204 to every POST, counts; GET /stats, POST /reset."""

    def __init__(self) -> None:
        self.requests = 0
        self.ids: set[str] = set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        body = b""
        if scope["path"] == "/stats":
            body = json.dumps({"requests": self.requests, "unique": len(self.ids)}).encode()
        elif scope["path"] == "/reset":
            self.requests, self.ids = 0, set()
        else:
            self.requests += 1
            for name, value in scope["headers"]:
                if name == b"webhook-id":
                    self.ids.add(value.decode())
        status = 200 if body else 204
        headers = [(b"content-type", b"application/json")] if body else []
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _serve(port: int) -> None:
    import uvicorn

    uvicorn.run(Receiver(), host="127.0.0.1", port=port, log_level="warning",
                access_log=False, lifespan="off")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def receiver() -> Iterator[str]:
    import httpx

    port = _free_port()
    proc = mp.get_context("spawn").Process(target=_serve, args=(port,), daemon=True)
    proc.start()
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(f"{base}/stats", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.join(timeout=10)


def _stats(base: str, reset: bool = False) -> dict[str, int]:
    import httpx

    stats: dict[str, int] = httpx.get(f"{base}/stats").json()
    if reset:
        httpx.post(f"{base}/reset")
    return stats


# --- (a) delivery -----------------------------------------------------------------------


def _bodies(n: int, round_: int) -> list[tuple[str, str, int]]:
    """(message id, body, case id) of n case.transitioned events."""
    from careloop.engine.webhooks import body_of

    now = datetime.now(UTC)
    out = []
    for i in range(n):
        case_id = 1 + i
        message_id = f"case:{case_id}:v{2 + round_}:0:case.transitioned"
        data = {"case_id": case_id, "case_type": "referral", "state": "documentation_review",
                "version": 2, "from": "intake_received", "to": "documentation_review",
                "transition": "begin_review", "reason": ""}
        out.append((message_id, body_of("case.transitioned", message_id, now, data), case_id))
    return out


def subscribe(app: Any, url: str) -> int:
    from careloop.adapters.webhooks import new_secret

    now = datetime.now(UTC)
    with app.deps.uow() as work:
        subscription = work.webhooks.add_subscription({
            "name": "bench-receiver", "url": url, "event_types": ["case.*"], "filter": None,
            "secrets": [new_secret()], "active": True, "disabled_reason": None,
            "created_at": now, "updated_at": now})
        work.commit()
    return subscription


def enqueue(app: Any, subscription: int, bodies: list[tuple[str, str, int]]) -> None:
    now = datetime.now(UTC)
    with app.deps.uow() as work:
        work.webhooks.enqueue([
            {"subscription_id": subscription, "message_id": message_id,
             "event_type": "case.transitioned", "case_id": case_id, "body": body,
             "status": "pending", "attempts": 0, "next_attempt_at": now, "leased_until": None,
             "created_at": now}
            for message_id, body, case_id in bodies])
        work.commit()


def deliver_careloop(app: Any) -> tuple[int, float]:
    from careloop.adapters.webhooks import WebhookSender, signed_headers
    from careloop.engine.webhooks import deliver_once
    from careloop.engine.worker import Worker

    batch = Worker.__dataclass_fields__["delivery_batch"].default
    sender = WebhookSender(allow_private=True)
    clock = app.deps.clock
    total = 0
    t0 = time.perf_counter()
    while done := deliver_once(app.deps.uow, clock, sender, signed_headers, batch):
        total += done
    seconds = time.perf_counter() - t0
    sender.close()
    return total, seconds


def deliver_raw(url: str, bodies: list[tuple[str, str, int]]) -> tuple[int, float]:
    import httpx

    with httpx.Client() as client:
        client.post(url, content=b"{}")  # open the keep-alive connection
        t0 = time.perf_counter()
        for message_id, body, _ in bodies:
            response = client.post(url, content=body.encode(), headers={
                "webhook-id": message_id, "content-type": "application/json"})
            response.raise_for_status()
        return len(bodies), time.perf_counter() - t0


def delivered(app: Any) -> dict[str, int]:
    with app.engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT status, count(*) FROM webhook_deliveries GROUP BY status").all()
    return {str(status): int(count) for status, count in rows}


def bench_delivery(backend: str, n: int, rounds: int) -> None:
    print(f"-- (a) delivery: {n:,} webhooks to a local uvicorn receiver, {backend}; "
          f"{rounds} alternating rounds per side --")
    if backend == "postgres" and (problem := c.pg_problem()):
        print(f"   skipped: PostgreSQL unreachable ({problem})")
        return
    ours = theirs = ours_s = theirs_s = 0.0
    got = {"requests": 0, "unique": 0}
    with receiver() as base, _database(backend) as url:
        app = c.build_app(url)
        try:
            subscription = subscribe(app, f"{base}/hook")
            for round_ in range(rounds):
                bodies = _bodies(n, round_)
                enqueue(app, subscription, bodies)
                _stats(base, reset=True)
                count, seconds = deliver_careloop(app)
                ours, ours_s = ours + count, ours_s + seconds
                stats = _stats(base, reset=True)
                got = {k: got[k] + stats[k] for k in got}
                count, seconds = deliver_raw(f"{base}/hook", bodies)
                theirs, theirs_s = theirs + count, theirs_s + seconds
            outcome = delivered(app)
        finally:
            app.engine.dispose()
    c.line("careloop deliver_once loop", f"{ours / ours_s:7.0f} deliveries/s  ({ours:,.0f} in "
           f"{ours_s:.2f} s)")
    c.line("raw httpx.Client keep-alive POST loop", f"{theirs / theirs_s:7.0f} requests/s  "
           f"({theirs:,.0f} in {theirs_s:.2f} s)")
    c.ratio_line("ratio careloop / raw", ours / ours_s, theirs / theirs_s, target_pct=50)
    c.line("receiver saw from careloop",
           f"{got['requests']:,} requests, {got['unique']:,} distinct webhook-ids")
    c.line("delivery rows by status", ", ".join(f"{k} {v:,}" for k, v in outcome.items()))


@contextmanager
def _database(backend: str) -> Iterator[str]:
    if backend == "postgres":
        with c.pg_schema("bench_webhooks") as url:
            yield url
    else:
        with c.temp_dir("careloop-bench-wh-") as tmp:
            yield f"sqlite:///{tmp / 'careloop.db'}"


# --- (b) outbox claiming -------------------------------------------------------------------


def load_outbox(url: str, events: int, cases: int) -> None:
    """``events`` pending outbox rows over ``cases`` case ids, inserted with COPY."""
    import psycopg

    rng = random.Random(3)
    now = datetime.now(UTC).isoformat()
    with psycopg.connect(c.pg_conninfo(url), autocommit=True) as connection:
        copy_sql = ("COPY outbox (case_id, event_type, payload, idempotency_key, created_at, "
                    "available_at, attempts) FROM STDIN")
        with connection.cursor() as cursor, cursor.copy(copy_sql) as copy:
            for i in range(events):
                case_id = 1 + rng.randrange(cases)
                payload = json.dumps({"case_id": case_id, "case_type": "referral",
                                      "state": "documentation_review", "version": 2 + i})
                copy.write_row((case_id, "case.updated", payload, f"bench:{i}", now, now, 0))
        connection.execute("CREATE TABLE raw_outbox (LIKE outbox INCLUDING ALL)")
        connection.execute("INSERT INTO raw_outbox SELECT * FROM outbox")
        connection.execute("VACUUM ANALYZE outbox")
        connection.execute("VACUUM ANALYZE raw_outbox")


def _claim_careloop(url: str, ready: Any, go: Any, results: Any) -> None:
    try:
        from careloop.engine.outbox import relay_once
        from careloop.services.ports import SystemClock

        app = c.build_app(url, migrate=False, db_pool_size=2)
        seen: list[tuple[int, int, float]] = []

        def record(work: Any, event: Any) -> None:
            seen.append((int(event["case_id"]), int(event["id"]), time.monotonic()))

        def pending() -> int:
            with app.engine.connect() as connection:
                return int(connection.exec_driver_sql(
                    "SELECT count(*) FROM outbox WHERE published_at IS NULL").scalar_one())

        clock = SystemClock()
        pending()
        ready.put(True)
        go.wait()
        prefixes = {"claim": "SELECT outbox.id", "savepoint": "SAVEPOINT",
                    "release": "RELEASE SAVEPOINT"}
        with StatementClock(app.engine, prefixes) as statements:
            while True:
                if not relay_once(app.deps.uow, clock, [record], 500):
                    if not pending():
                        break
                    time.sleep(0.001)  # the rest waits behind the other process's batch
        results.put(("ok", seen, time.time(), statements.spent))
        app.engine.dispose()
    except Exception as error:
        results.put(("error", repr(error), 0.0, {}))


RAW_CLAIM = """
SELECT o.id, o.case_id, o.event_type, o.payload, o.idempotency_key, o.attempts
FROM raw_outbox o
WHERE o.published_at IS NULL AND o.dead_at IS NULL AND o.available_at <= %s
  AND NOT EXISTS (SELECT 1 FROM raw_outbox e WHERE e.case_id = o.case_id
                  AND e.published_at IS NULL AND e.dead_at IS NULL AND e.id < o.id)
ORDER BY o.id LIMIT %s FOR UPDATE SKIP LOCKED
"""
RAW_MARK = ("UPDATE raw_outbox SET published_at = %s, attempts = attempts + 1, "
            "last_error = NULL WHERE id = ANY(%s)")


def _claim_raw(url: str, ready: Any, go: Any, results: Any) -> None:
    try:
        import psycopg

        connection = psycopg.connect(c.pg_conninfo(url))
        cursor = connection.cursor()
        seen: list[tuple[int, int, float]] = []
        ready.put(True)
        go.wait()
        while True:
            now = datetime.now(UTC)
            cursor.execute(RAW_CLAIM, (now, 500))
            rows = cursor.fetchall()
            if rows:
                for row in rows:
                    seen.append((int(row[1]), int(row[0]), time.monotonic()))
                cursor.execute(RAW_MARK, (now, [r[0] for r in rows]))
            connection.commit()
            if not rows:
                cursor.execute("SELECT count(*) FROM raw_outbox WHERE published_at IS NULL")
                left = cursor.fetchone()[0]  # type: ignore[index]
                connection.commit()
                if not left:
                    break
                time.sleep(0.001)
        results.put(("ok", seen, time.time(), {}))
        connection.close()
    except Exception as error:
        results.put(("error", repr(error), 0.0, {}))


def _drain(target: Any, url: str
           ) -> tuple[list[tuple[int, int, float]], float, dict[str, list[float]]]:
    outcomes, t0 = c.run_processes(target, url, WORKERS, timeout=3600)
    spent: dict[str, list[float]] = {}
    for o in outcomes:
        for label, (count, seconds, slowest) in o[3].items():
            entry = spent.setdefault(label, [0, 0.0, 0.0])
            entry[0], entry[1], entry[2] = entry[0] + count, entry[1] + seconds, max(
                entry[2], slowest)
    return [x for o in outcomes for x in o[1]], max(o[2] for o in outcomes) - t0, spent


def order_violations(seen: list[tuple[int, int, float]]) -> int:
    """Events handled before (or as) an earlier event of the same case was handled."""
    by_case: dict[int, list[tuple[int, float]]] = {}
    for case_id, event_id, at in seen:
        by_case.setdefault(case_id, []).append((event_id, at))
    bad = 0
    for handled in by_case.values():
        handled.sort()
        bad += sum(1 for a, b in pairwise(handled) if b[1] <= a[1])
    return bad


def bench_claiming(events: int, cases: int) -> None:
    print(f"-- (b) outbox claiming, PostgreSQL: {events:,} events over {cases:,} cases, "
          f"{WORKERS} processes, batch 500, no-op handler --")
    if problem := c.pg_problem():
        print(f"   skipped: PostgreSQL unreachable ({problem})")
        return
    import psycopg

    with c.pg_schema("bench_outbox") as url:
        app = c.build_app(url)
        app.engine.dispose()
        load_outbox(url, events, cases)
        ours, ours_s, spent = _drain(_claim_careloop, url)
        theirs, theirs_s, _ = _drain(_claim_raw, url)
        with psycopg.connect(c.pg_conninfo(url)) as connection:
            left = connection.execute(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()[0]
    for label, seen, seconds in (("careloop relay_once", ours, ours_s),
                                 ("raw psycopg claim + mark", theirs, theirs_s)):
        distinct = len({event_id for _, event_id, _ in seen})
        c.line(label, f"{distinct / seconds:7.0f} events/s  ({distinct:,} in {seconds:.1f} s; "
               f"handler calls {len(seen):,}; order violations {order_violations(seen)})")
    c.ratio_line("ratio careloop / raw", len({e for _, e, _ in ours}) / ours_s,
                 len({e for _, e, _ in theirs}) / theirs_s)
    c.line("   careloop DB time, summed over processes", ", ".join(
        f"{label} {seconds:.1f} s ({count:,.0f}, slowest {slowest * 1000:.0f} ms)"
        for label, (count, seconds, slowest) in spent.items()))
    rate = len({e for _, e, _ in ours}) / ours_s
    c.target_line("careloop >= 5,000 events/s", rate >= 5000, f"{rate:.0f}/s")
    c.line("careloop outbox rows left unpublished", f"{left}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres",
                        help="database of part (a); part (b) is PostgreSQL only")
    parser.add_argument("--part", choices=("a", "b", "both"), default="both")
    parser.add_argument("--deliveries", type=int, default=None, help="default 2,000")
    parser.add_argument("--rounds", type=int, default=None, help="part (a); default 2")
    parser.add_argument("--events", type=int, default=None, help="default 50,000")
    parser.add_argument("--cases", type=int, default=None, help="default 10,000")
    args = c.parse_args(__doc__, parser)
    deliveries = args.deliveries or (200 if args.quick else 2_000)
    events = args.events or (5_000 if args.quick else 50_000)
    cases = args.cases or max(1, events // 5)
    c.header("webhook delivery and outbox claiming")
    if args.part in ("a", "both"):
        bench_delivery(args.backend, deliveries, args.rounds or (1 if args.quick else 2))
    if args.part in ("b", "both"):
        bench_claiming(events, cases)


if __name__ == "__main__":
    main()
