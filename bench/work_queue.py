"""Work-queue reads on a large database: CaseRepository.search (was .list) vs the same SQL raw.

Fills a migrated careloop database with N referrals (default 1,000,000) written straight
into ``cases`` (secondary indexes dropped, rows bulk-loaded with executemany on SQLite
or COPY on PostgreSQL, indexes re-created exactly as careloop's migration defines them,
then ANALYZE). Spread: 14 workflow states (most old referrals terminal), 3 clinics,
8 specialties, created_at uniform over the last 90 days, ids in created_at order, a
~600-byte JSON payload per row like the API stores.

Then, on one open connection and transaction per side:
  * Q queue queries (status + clinic + specialty, oldest first, limit 50) through
    ``CaseRepository(connection).list`` vs the equivalent SQL through sqlite3/psycopg
    (results are compared row by row); p50/p99 ms and the ratio (target p99 < 50 ms);
  * free text: ``q`` inside a queue filter, and ``q`` alone (an MRN: the worst case,
    no indexed filter narrows it);
  * cursor paging: first page vs page 20 of one queue, and first page vs a cursor in the
    middle of a whole-status queue (~60,000 rows at 1M); cursor pages also show the raw
    SQL with a row-value keyset condition ``(created_at, id) > (?, ?)`` for comparison;
  * for context, the full use case ``services.queries.list_cases`` (unit of work, the
    query, and the audit entry every patient-data read writes and commits).
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

LIMIT = 50
SUMMARY = ("id", "case_type", "state", "version", "clinic", "specialty", "urgency", "payer",
           "assignee", "patient_ref", "created_at", "updated_at", "state_entered_at",
           "workflow_key", "workflow_version")
LOAD_COLUMNS = ("case_type", "workflow_key", "workflow_version", "state", "version", "clinic",
                "specialty", "urgency", "payer", "assignee", "patient_ref", "search_text",
                "data", "created_by", "created_at", "updated_at", "state_entered_at")
PAYERS = ("Blue Harbor Health", "Evergreen Mutual", "Medicare", "Medicaid", "Summit Care")


# --- data ------------------------------------------------------------------------------


def _payload_template() -> str:
    """referral JSON with %s holes: family, given, mrn, member, specialty, urgency, reason,
    payer, clinic, channel."""
    payload = c.referral_payload(0)
    payload["patient"].update(family_name="@1", given_name="@2", mrn="@3", member_id="@4")
    payload.update(specialty="@5", urgency="@6", reason="@7", clinic="@9", channel="@10")
    payload["payer"]["name"] = "@8"
    text = json.dumps(payload).replace("%", "%%")
    for hole in range(10, 0, -1):
        text = text.replace(f'"@{hole}"', '"%s"')
    return text


def generate(rows: int, seed: int = 42) -> Iterator[tuple[Any, ...]]:
    """(state, clinic, specialty, urgency, payer, mrn, search_text, data, created_at)
    in created_at order; created_at is an aware UTC datetime."""
    rng = random.Random(seed)
    states = [s for s, _ in c.STATE_WEIGHTS]
    weights = [w for _, w in c.STATE_WEIGHTS]
    template = _payload_template()
    now = datetime.now(UTC)
    span = 90 * 86400.0
    offsets = sorted(rng.random() * span for _ in range(rows))
    chosen_states = rng.choices(states, weights, k=rows)
    start = now - timedelta(days=90)
    for i, offset in enumerate(offsets):
        clinic = c.CLINICS[rng.randrange(3)]
        specialty = c.SPECIALTIES[rng.randrange(8)]
        urgency = c.URGENCIES[i % 5]
        family, given = c.FAMILY_NAMES[i % 14], c.GIVEN_NAMES[i % 13]
        mrn, member = f"MRN{1000000 + i}", f"M{55500000 + i}"
        reason = c.REASONS[rng.randrange(8)]
        payer = PAYERS[i % 5]
        data = template % (family, given, mrn, member, specialty, urgency, reason, payer,
                           clinic, c.CHANNELS[i % 7])
        text = (f"{family} {given} {mrn} {member} {reason} dr. lena rossi {specialty} "
                f"{clinic}").lower()
        yield (chosen_states[i], clinic, specialty, urgency, payer, mrn, text, data,
               start + timedelta(seconds=offset))


def _sqlite_ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")  # careloop's SQLite DATETIME text, UTC


def load_sqlite(path: Path, rows: int) -> None:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=OFF")  # loading only; the benchmark reopens
    connection.execute("PRAGMA cache_size=-262144")
    indexes = connection.execute(
        "SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='cases' "
        "AND sql IS NOT NULL").fetchall()
    for name, _ in indexes:
        connection.execute(f'DROP INDEX "{name}"')
    insert = (f"INSERT INTO cases ({', '.join(LOAD_COLUMNS)}) "
              f"VALUES ({', '.join('?' * len(LOAD_COLUMNS))})")

    def rows_iter() -> Iterator[tuple[Any, ...]]:
        for state, clinic, spec, urg, payer, mrn, text, data, created in generate(rows):
            ts = _sqlite_ts(created)
            yield ("referral", "referral-standard", 1, state, 1, clinic, spec, urg, payer,
                   None, mrn, text, data, 1, ts, ts, ts)

    connection.execute("BEGIN")
    connection.executemany(insert, rows_iter())
    connection.execute("COMMIT")
    for _, sql in indexes:
        connection.execute(sql)
    connection.execute("ANALYZE")
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()


def load_postgres(url: str, rows: int) -> None:
    import psycopg

    with psycopg.connect(c.pg_conninfo(url), autocommit=True) as connection:
        connection.execute("SET maintenance_work_mem = '512MB'")
        indexes = connection.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = 'cases' AND indexname <> 'pk_cases'").fetchall()
        for name, _ in indexes:
            connection.execute(f'DROP INDEX "{name}"')
        copy_sql = f"COPY cases ({', '.join(LOAD_COLUMNS)}) FROM STDIN"
        with connection.cursor() as cursor, cursor.copy(copy_sql) as copy:
            buffer: list[str] = []
            for state, clinic, spec, urg, payer, mrn, text, data, created in generate(rows):
                ts = created.isoformat()
                # Text COPY format; the generated values hold no tab, newline or backslash.
                buffer.append(f"referral\treferral-standard\t1\t{state}\t1\t{clinic}\t{spec}\t"
                              f"{urg}\t{payer}\t\\N\t{mrn}\t{text}\t{data}\t1\t{ts}\t{ts}\t{ts}\n")
                if len(buffer) >= 5000:
                    copy.write("".join(buffer))
                    buffer.clear()
            copy.write("".join(buffer))
        for _, definition in indexes:
            connection.execute(definition)
        connection.execute("VACUUM ANALYZE cases")


# --- queries ---------------------------------------------------------------------------


class RawQueries:
    """The SQL careloop's CaseRepository.list sends, written out for the bare driver."""

    def __init__(self, backend: str, connection: Any) -> None:
        self.backend, self.connection = backend, connection
        self.p = "?" if backend == "sqlite" else "%s"
        self.cursor = connection.cursor()

    def list(self, state: str | None, clinic: str | None, specialty: str | None,
             text: str | None = None, after: tuple[Any, int] | None = None,
             row_value: bool = False) -> list[tuple[Any, ...]]:
        """``row_value``: the keyset condition as ``(created_at, id) > (?, ?)``, which both
        databases can seek an index with, instead of careloop's OR form."""
        p = self.p
        where: list[str] = []
        params: list[Any] = []
        if state:
            where.append(f"state IN ({p})")
            params.append(state)
        if specialty:
            where.append(f"specialty = {p}")
            params.append(specialty)
        if clinic:
            where.append(f"clinic = {p}")
            params.append(clinic)
        if text:
            pct = "'%%'" if self.backend != "sqlite" else "'%'"
            where.append(f"search_text LIKE {pct} || {p} || {pct} ESCAPE '/'")
            params.append(text.lower())
        if after and row_value:
            where.append(f"(created_at, id) > ({p}, {p})")
            params += [after[0], after[1]]
        elif after:
            where.append(f"(created_at > {p} OR (created_at = {p} AND id > {p}))")
            params += [after[0], after[0], after[1]]
        sql = (f"SELECT {', '.join(SUMMARY)} FROM cases"
               + (f" WHERE {' AND '.join(where)}" if where else "")
               + f" ORDER BY created_at, id LIMIT {p}")
        self.cursor.execute(sql, (*params, LIMIT + 1))
        return self.cursor.fetchall()[:LIMIT]


def _cursor_for(created_at: datetime, case_id: int) -> str:
    """A cursor as the API hands it out (careloop.adapters.db.case_search._encode_cursor)."""
    try:
        from careloop.adapters.db.case_search import _encode_cursor
    except ImportError:  # pragma: no cover - fall back to the documented shape
        raw = f"{created_at.isoformat()}|{case_id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return _encode_cursor(created_at, case_id)


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def _timeit(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def _median_ms(samples: list[float]) -> str:
    return f"{c.median(samples) * 1000:7.2f} ms"


def run_queries(backend: str, app: Any, raw_connection: Any, queries: int, rows: int) -> None:
    from careloop.adapters.db.cases import CaseFilter, CaseRepository
    from careloop.domain.access import Actor
    from careloop.services import queries as query_service

    rng = random.Random(7)
    now = datetime.now(UTC)
    raw = RawQueries(backend, raw_connection)
    mismatches = 0
    with app.engine.connect() as connection:
        repo = CaseRepository(connection)
        # The query method was called ``list`` and is ``search`` since; take either.
        repo_list = getattr(repo, "search", None) or repo.list

        def ours(state: str | None, clinic: str | None, specialty: str | None,
                 text: str | None = None, cursor: str | None = None
                 ) -> tuple[list[dict[str, Any]], str | None]:
            flt = CaseFilter(states=(state,) if state else (), clinic=clinic,
                             specialty=specialty, text=text)
            return repo_list(flt, now, LIMIT, cursor)  # type: ignore[no-any-return]

        def same(a: list[dict[str, Any]], b: list[tuple[Any, ...]]) -> bool:
            return [r["id"] for r in a] == [r[0] for r in b]

        # Warm both sides up (plans, caches, statement preparation).
        for _ in range(50):
            key = (rng.choice(c.OPEN_STATES), rng.choice(c.CLINICS), rng.choice(c.SPECIALTIES))
            ours(*key)
            raw.list(*key)
        our_lat, raw_lat, sizes = [], [], []
        for _ in range(queries):
            key = (rng.choice(c.OPEN_STATES), rng.choice(c.CLINICS), rng.choice(c.SPECIALTIES))
            # Alternate which side goes first so neither always finds the cache warmer.
            if rng.random() < 0.5:
                t_ours, (items, _) = _timeit(lambda key=key: ours(*key))
                t_raw, raw_rows = _timeit(lambda key=key: raw.list(*key))
            else:
                t_raw, raw_rows = _timeit(lambda key=key: raw.list(*key))
                t_ours, (items, _) = _timeit(lambda key=key: ours(*key))
            our_lat.append(t_ours)
            raw_lat.append(t_raw)
            sizes.append(len(items))
            mismatches += not same(items, raw_rows)
        c.line(f"queue query x{queries}, careloop", c.latency_ms(our_lat))
        c.line(f"queue query x{queries}, raw driver", c.latency_ms(raw_lat))
        c.ratio_line("ratio careloop / raw (p50)", c.percentile(our_lat, 50),
                     c.percentile(raw_lat, 50), higher_is_better=False)
        c.target_line("target careloop p99 < 50 ms", c.percentile(our_lat, 99) < 0.050,
                      f"p99 {c.percentile(our_lat, 99) * 1000:.2f} ms")
        c.line("rows per page (mean)", f"{sum(sizes) / len(sizes):.1f}")

        reps = 5 if queries < 200 else 15

        def compare(label: str, our_fn: Callable[[], Any], raw_fn: Callable[[], Any],
                    alt_fn: Callable[[], Any] | None = None) -> None:
            nonlocal mismatches
            our_t, raw_t, alt_t = [], [], []
            for _ in range(reps):
                t1, result = _timeit(our_fn)
                t2, raw_rows = _timeit(raw_fn)
                our_t.append(t1)
                raw_t.append(t2)
                if alt_fn is not None:
                    t3, alt_rows = _timeit(alt_fn)
                    alt_t.append(t3)
                    mismatches += not same(result[0], alt_rows)
            mismatches += not same(result[0], raw_rows)
            alt = f" | raw row-value keyset {_median_ms(alt_t)}" if alt_t else ""
            c.line(label, f"careloop {_median_ms(our_t)} | raw {_median_ms(raw_t)}{alt}"
                   f"  (median of {reps}, {len(raw_rows)} rows)")

        state, clinic, specialty = "intake_received", c.CLINICS[0], c.SPECIALTIES[0]
        compare("q='okafor' + status/clinic/specialty",
                lambda: ours(state, clinic, specialty, "okafor"),
                lambda: raw.list(state, clinic, specialty, "okafor"))
        mrn = f"mrn{1000000 + rows // 2}"
        compare(f"q='{mrn}' alone (no indexed filter)",
                lambda: ours(None, None, None, mrn), lambda: raw.list(None, None, None, mrn))

        # Cursor paging inside one queue: page 1 vs page 20 (cursor followed from page 1).
        page, cursor, last = 1, None, None
        pages: list[tuple[str | None, Any]] = []
        while page <= 20:
            items, next_cursor = ours(state, clinic, specialty, None, cursor)
            pages.append((cursor, last))
            if next_cursor is None:
                break
            last = (items[-1]["created_at"], items[-1]["id"])
            cursor, page = next_cursor, page + 1
        deep_cursor, deep_after = pages[-1]
        raw_after = _raw_after(backend, deep_after)
        compare("queue page 1", lambda: ours(state, clinic, specialty),
                lambda: raw.list(state, clinic, specialty))
        compare(f"queue page {len(pages)} (cursor)",
                lambda: ours(state, clinic, specialty, None, deep_cursor),
                lambda: raw.list(state, clinic, specialty, None, raw_after),
                lambda: raw.list(state, clinic, specialty, None, raw_after, row_value=True))

        # A whole-status queue (no clinic/specialty): page 1 vs a cursor in its middle.
        big = "appointment_scheduled"
        total = connection.exec_driver_sql(
            "SELECT count(*) FROM cases WHERE state = " + ("?" if backend == "sqlite" else "%s"),
            (big,)).scalar_one()
        mid = connection.exec_driver_sql(
            "SELECT created_at, id FROM cases WHERE state = "
            + ("?" if backend == "sqlite" else "%s")
            + " ORDER BY created_at, id LIMIT 1 OFFSET " + str(total // 2), (big,)).one()
        mid_at = _as_datetime(mid[0])
        mid_cursor = _cursor_for(mid_at, int(mid[1]))
        mid_after = _raw_after(backend, (mid_at, int(mid[1])))
        compare(f"status-only queue ({total} rows) page 1", lambda: ours(big, None, None),
                lambda: raw.list(big, None, None))
        compare("status-only queue, cursor at its middle",
                lambda: ours(big, None, None, None, mid_cursor),
                lambda: raw.list(big, None, None, None, mid_after),
                lambda: raw.list(big, None, None, None, mid_after, row_value=True))
        run_access_checks(repo_list, now, rng, queries)
        connection.rollback()

    # The whole read use case: unit of work + query + audit entry (a durable write).
    actor = Actor(user_id=1, username="bench", roles=frozenset({"administrator"}))
    service_lat = []
    for _ in range(20 if queries < 200 else 200):
        key = (rng.choice(c.OPEN_STATES), rng.choice(c.CLINICS), rng.choice(c.SPECIALTIES))
        flt = CaseFilter(states=(key[0],), clinic=key[1], specialty=key[2])
        t, _ = _timeit(lambda flt=flt: query_service.list_cases(app.deps, actor, flt, LIMIT,
                                                                  None))
        service_lat.append(t)
    c.line("service list_cases (uow + query + audit)", c.latency_ms(service_lat))
    if mismatches:
        print(f"   WARNING: {mismatches} careloop/raw result mismatches")
    else:
        c.line("careloop and raw results", "identical")


def run_access_checks(search: Callable[..., Any], now: datetime, rng: random.Random,
                      queries: int) -> None:
    """What permission, record-rule and field-mask checks add to the queue query: the same
    search without checks vs with them (role check, the record rule as SQL, masking of the
    returned rows), for an actor at two of the three clinics whose results are identical."""
    from careloop.adapters.db.cases import CaseFilter
    from careloop.domain.access import Action, Actor
    from careloop.domain.masking import mask_summaries, view_of
    from careloop.domain.record_rules import scope_of

    actor = Actor(user_id=99, username="sid.scheduler", roles=frozenset({"scheduler"}),
                  locations=frozenset(c.CLINICS[:2]), teams=frozenset({"cardiology-triage"}))

    def checked(flt: Any) -> list[dict[str, Any]]:
        actor.require(Action.CASE_READ)
        rows, _ = search(flt, now, LIMIT, None, scope=scope_of(actor))
        mask_summaries(view_of(actor), rows)
        return list(rows)

    def unchecked(flt: Any) -> list[dict[str, Any]]:
        return list(search(flt, now, LIMIT, None)[0])

    for label, with_clinic in (("queue (status+clinic+specialty)", True),
                               ("status-only queue (the actor's whole reach)", False)):
        plain_lat, checked_lat, mismatched = [], [], 0
        for i in range(queries + 50):
            clinic = rng.choice(c.CLINICS[:2]) if with_clinic else None
            flt = CaseFilter(states=(rng.choice(c.OPEN_STATES),), clinic=clinic,
                             specialty=rng.choice(c.SPECIALTIES) if with_clinic else None)
            first, second = (checked, unchecked) if i % 2 else (unchecked, checked)
            t1, r1 = _timeit(lambda flt=flt, f=first: f(flt))
            t2, r2 = _timeit(lambda flt=flt, f=second: f(flt))
            t_checked, rows = (t1, r1) if first is checked else (t2, r2)
            t_plain, plain = (t2, r2) if first is checked else (t1, r1)
            if i < 50:
                continue  # warm-up
            checked_lat.append(t_checked)
            plain_lat.append(t_plain)
            if with_clinic:
                mismatched += [r["id"] for r in rows] != [r["id"] for r in plain]
        c.line(f"{label}, no checks x{queries}", c.latency_ms(plain_lat))
        c.line(f"{label}, with checks x{queries}", c.latency_ms(checked_lat))
        added = c.percentile(checked_lat, 50) / c.percentile(plain_lat, 50) - 1
        c.ratio_line("ratio with / without checks (p50)", c.percentile(checked_lat, 50),
                     c.percentile(plain_lat, 50), higher_is_better=False)
        c.target_line("target: checks add < 10%", added < 0.10, f"{added * 100:+.1f}% at p50")
        if mismatched:
            print(f"   WARNING: {mismatched} pages differ with checks on")


def _raw_after(backend: str, after: Any) -> tuple[Any, int] | None:
    if after is None:
        return None
    moment, case_id = after
    return (_sqlite_ts(moment.astimezone(UTC)) if backend == "sqlite" else moment, case_id)


# --- driver ------------------------------------------------------------------------------


def bench_sqlite(rows: int, queries: int) -> None:
    print(f"-- SQLite, {rows:,} referrals --")
    with c.temp_dir("careloop-bench-wq-") as tmp:
        path = tmp / "careloop.db"
        app = c.build_app(f"sqlite:///{path}")
        app.engine.dispose()
        t, _ = _timeit(lambda: load_sqlite(path, rows))
        size = path.stat().st_size / 1e6
        c.line("bulk load + indexes + ANALYZE", f"{t:.1f} s ({size:.0f} MB)")
        app = c.build_app(f"sqlite:///{path}", migrate=False)
        raw = c.sqlite_connect(path)
        try:
            run_queries("sqlite", app, raw, queries, rows)
        finally:
            raw.close()
            app.engine.dispose()


def bench_postgres(rows: int, queries: int) -> None:
    print(f"-- PostgreSQL, {rows:,} referrals --")
    problem = c.pg_problem()
    if problem:
        print(f"   skipped: PostgreSQL unreachable ({problem})")
        return
    import psycopg

    with c.pg_schema("bench_wq") as url:
        app = c.build_app(url)
        app.engine.dispose()
        t, _ = _timeit(lambda: load_postgres(url, rows))
        c.line("COPY + indexes + VACUUM ANALYZE", f"{t:.1f} s")
        app = c.build_app(url, migrate=False)
        raw = psycopg.connect(c.pg_conninfo(url))
        try:
            run_queries("postgres", app, raw, queries, rows)
        finally:
            raw.close()
            app.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--rows", type=int, default=None, help="default 1,000,000")
    parser.add_argument("--queries", type=int, default=None, help="default 1000")
    args = c.parse_args(__doc__, parser)
    rows = args.rows or (20_000 if args.quick else 1_000_000)
    queries = args.queries or (100 if args.quick else 1000)
    c.header("work-queue queries, CaseRepository.search vs raw SQL")
    if args.backend in ("sqlite", "both"):
        bench_sqlite(rows, queries)
    if args.backend in ("postgres", "both"):
        bench_postgres(rows, queries)


if __name__ == "__main__":
    main()
