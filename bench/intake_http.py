"""Referral intake over HTTP: careloop under uvicorn vs minimal FastAPI apps, on SQLite.

Servers (each one uvicorn process, one worker, uvloop + httptools as `careloop serve`
gets them; all started up front and measured in alternating rounds so background load
hits every side alike):

  careloop       create_app() on a fresh, migrated SQLite file, bearer-token auth, with
                 the in-process outbox worker that `careloop serve` runs (its event log
                 goes to a file); --no-outbox-worker leaves it out. Concurrent POSTs share
                 transactions (api/intake_batcher.py); the worker gives way to requests
                 in flight for up to CARELOOP_WORKER_YIELD_SECONDS (engine/pacing.py), so
                 during a round automation falls behind: after each careloop round the
                 bench waits until the worker has relayed every event (no other server
                 is measured meanwhile) and prints that backlog and how long it took
  fastapi+sqlite one sync POST route (threadpool, like careloop's) that inserts the JSON
                 body into one SQLite table with careloop's pragmas (WAL,
                 synchronous=FULL, BEGIN IMMEDIATE) and returns 201 with the row
  fastapi noop   the same route returning 201 without touching a database (the
                 framework's ceiling on this machine)

Client: one separate process running N (default 4) keep-alive HTTP/1.1 connections on
asyncio (uvloop) with requests pre-encoded as bytes and a minimal response reader. That
costs a few microseconds per request, far below what even the noop server needs, so the
client is not the bottleneck: its CPU use is printed (% of one core) beside the
server's. httpx would cost ~100-200 us of client CPU per request, which on this 2-core
machine would compete with the server for CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import socket
import sqlite3
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

POOL = 512
PATH = "/api/v1/referrals"
SERVERS = ("careloop", "fastapi+sqlite", "fastapi noop")


# --- servers (run in their own processes) -------------------------------------------------


def _baseline_app(db_path: str | None) -> Any:
    from fastapi import Body, FastAPI

    api = FastAPI()
    local = threading.local()

    def connection() -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = c.sqlite_connect(db_path or ":memory:")
        return conn

    if db_path is not None:
        connection().execute("CREATE TABLE IF NOT EXISTS referrals (id INTEGER PRIMARY KEY, "
                             "data JSON NOT NULL, created_at DATETIME NOT NULL)")

    @api.post(PATH, status_code=201)
    def create(body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008 - FastAPI idiom
        if db_path is None:
            return {"id": 1, "referral": body}
        conn = connection()
        now = datetime.now(UTC)
        conn.execute("BEGIN IMMEDIATE")
        try:
            row_id = conn.execute(
                "INSERT INTO referrals (data, created_at) VALUES (?, ?)",
                (json.dumps(body), now.strftime("%Y-%m-%d %H:%M:%S.%f"))).lastrowid
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return {"id": row_id, "created_at": now, "referral": body}

    return api


def _serve(kind: str, db_path: str, port: int, outbox_worker: bool, log_path: str) -> None:
    import uvicorn

    if kind == "careloop":
        from careloop.api.app import create_app
        from careloop.bootstrap import build_worker, settle_heap

        # What `careloop serve` does, with its INFO log in a file instead of the terminal.
        logging.basicConfig(filename=log_path, level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
        app = c.build_app(f"sqlite:///{db_path}", migrate=False)
        worker = build_worker(app) if outbox_worker else None
        api = create_app(app)
        settle_heap()
        if worker is not None:
            worker.start()  # relay, rules, timers, webhooks: as in `careloop serve`
    else:
        api = _baseline_app(db_path if kind == "fastapi+sqlite" else None)
    uvicorn.run(api, host="127.0.0.1", port=port, log_level="warning")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, proc: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.is_alive():
            raise RuntimeError(f"server on port {port} exited with {proc.exitcode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start in {timeout} s")


# --- client -----------------------------------------------------------------------------


def _requests(port: int, token: str) -> list[bytes]:
    out = []
    for i in range(POOL):
        body = json.dumps(c.referral_payload(i)).encode()
        head = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        out.append(head + body)
    return out


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"content-length:")
    if at < 0:
        raise RuntimeError(f"response without Content-Length: {head!r}")
    length = int(lower[at + 15:lower.find(b"\r\n", at)])
    await reader.readexactly(length)
    return status


async def _client(port: int, requests: list[bytes], offset: int, start: float, end: float,
                  latencies: list[float], statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    clock = time.perf_counter
    i = offset
    try:
        while True:
            t0 = clock()
            if t0 >= end:
                return
            writer.write(requests[i % POOL])
            i += 1
            status = await _read_response(reader)
            if t0 >= start:
                latencies.append(clock() - t0)
                statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def _load(port: int, requests: list[bytes], clients: int, warmup: float,
                seconds: float) -> tuple[list[float], dict[int, int]]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    start = time.perf_counter() + warmup
    end = start + seconds
    await asyncio.gather(*(_client(port, requests, k * 97, start, end, latencies, statuses)
                           for k in range(clients)))
    return latencies, statuses


class Side:
    def __init__(self, name: str, proc: Any, port: int, requests: list[bytes]) -> None:
        self.name, self.proc, self.port, self.requests = name, proc, port, requests
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.seconds = self.server_cpu = self.client_cpu = 0.0
        self.backlogs: list[tuple[int, float, int]] = []  # (events, seconds, left)

    def drain(self, db_path: Path, timeout: float = 600) -> None:
        """Wait until the in-process worker has relayed every event (careloop only)."""
        pending = ("SELECT count(*) FROM outbox WHERE published_at IS NULL "
                   "AND dead_at IS NULL")
        t0 = time.perf_counter()
        with sqlite3.connect(db_path, timeout=30) as connection:
            backlog = left = connection.execute(pending).fetchone()[0]
            while left and time.perf_counter() - t0 < timeout:
                time.sleep(0.05)
                left = connection.execute(pending).fetchone()[0]
        self.backlogs.append((backlog, time.perf_counter() - t0, left))

    def round(self, clients: int, warmup: float, seconds: float) -> None:
        cpu0, client0 = c.process_cpu_seconds(self.proc.pid), time.process_time()
        # CPU is sampled over warm-up + measured window; the ratio is what matters.
        latencies, statuses = asyncio.run(
            _load(self.port, self.requests, clients, warmup, seconds))
        wall = warmup + seconds
        self.server_cpu += (c.process_cpu_seconds(self.proc.pid) - cpu0) / wall * seconds
        self.client_cpu += (time.process_time() - client0) / wall * seconds
        self.latencies += latencies
        self.seconds += seconds
        for status, n in statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + n

    @property
    def rate(self) -> float:
        return self.statuses.get(201, 0) / self.seconds if self.seconds else float("nan")

    def report(self) -> None:
        bad = {s: n for s, n in self.statuses.items() if s != 201}
        c.line(self.name, f"{self.rate:7.0f} referrals/s  ({c.latency_ms(self.latencies)})"
               f"  server CPU {100 * self.server_cpu / self.seconds:.0f} %, "
               f"client CPU {100 * self.client_cpu / self.seconds:.0f} %"
               + (f"  NON-201: {bad}" if bad else ""))


def _setup_careloop(db_path: Path) -> str:
    from careloop.domain.access import SYSTEM_ACTOR
    from careloop.services import accounts

    app = c.build_app(f"sqlite:///{db_path}")
    accounts.add_user(app.deps, SYSTEM_ACTOR, app.hashing, "bench", "bench",
                      ["administrator"], None)
    token = accounts.create_token(app.deps, SYSTEM_ACTOR, "bench", "bench", None)
    app.engine.dispose()
    return token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent connections")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None, help="per round and server")
    parser.add_argument("--no-outbox-worker", action="store_true",
                        help="serve careloop without the in-process outbox worker")
    args = c.parse_args(__doc__, parser)
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (1.5 if args.quick else 8.0)
    warmup = 0.5 if args.quick else 1.5
    worker = not args.no_outbox_worker
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # the plain asyncio loop is slower but still far ahead of the server
        print("   (uvloop missing: client on the default asyncio loop)")
    c.header("intake over HTTP (SQLite)", clients=args.clients,
             outbox_worker="on" if worker else "off")
    print(f"   {rounds} alternating rounds of {warmup:g} s warm-up + {seconds:g} s per server")
    ctx = mp.get_context("spawn")
    with c.temp_dir("careloop-bench-http-") as tmp:
        token = _setup_careloop(tmp / "careloop.db")
        sides: list[Side] = []
        try:
            for kind in SERVERS:
                port = _free_port()
                proc = ctx.Process(target=_serve, daemon=True, args=(
                    kind, str(tmp / f"{kind.replace(' ', '_')}.db"
                              if kind != "careloop" else tmp / "careloop.db"),
                    port, worker, str(tmp / "careloop.log")))
                proc.start()
                sides.append(Side(kind, proc, port, _requests(port, token)))
            for side in sides:
                _wait_listening(side.port, side.proc)
            for _ in range(rounds):
                for side in sides:
                    side.round(args.clients, warmup, seconds)
                    if side.name == "careloop" and worker:
                        side.drain(tmp / "careloop.db")
        finally:
            for side in sides:
                if side.proc.is_alive():
                    side.proc.terminate()
                side.proc.join(timeout=10)
        careloop_rows = sqlite3.connect(tmp / "careloop.db").execute(
            "SELECT count(*) FROM cases").fetchone()[0]
    for side in sides:
        side.report()
    ours, insert, noop = sides
    c.ratio_line("ratio careloop / fastapi+sqlite", ours.rate, insert.rate)
    c.ratio_line("ratio careloop / fastapi noop", ours.rate, noop.rate)
    c.target_line("target >= 600 referrals/s", ours.rate >= 600, f"{ours.rate:.0f}/s")
    c.line("careloop cases stored", f"{careloop_rows}")
    for n, (backlog, took, left) in enumerate(ours.backlogs, 1):
        c.line(f"   round {n}: events pending when it ended",
               f"{backlog:,}, relayed in {took:.1f} s after it"
               + (f" ({backlog / took:,.0f}/s)" if took > 0.1 else "")
               + (f", {left:,} STILL PENDING" if left else ""))
    if any(s != 201 for side in sides for s in side.statuses):
        sys.exit("some requests did not return 201")


if __name__ == "__main__":
    main()
