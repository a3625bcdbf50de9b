"""An approval decision end to end on PostgreSQL, vs the same rows written with plain SQL.

careloop: ``careloop.services.approvals.decide`` as the API calls it: load and lock the
request with its decisions, load the case through the record rules, the pinned policy
(compiled once per process), the reviewer's standing, segregation of duties, the
decision row, the request's progress, the audit entry (hash-chained), the
``approval.decided`` outbox event, the timers, and on the final approval the guarded
transition carried out as the requester (state, history, audit, event), in one
transaction. The bench policy guards ``begin_review`` with a quorum of two, so half the
decisions are intermediate and half are final (with the transition).

raw: the same statements for each decision with psycopg, one transaction each, taking
turns with careloop's decisions so both see the same machine load: lock
and read the request and its decisions, read the case, insert the decision, update the
request, insert the audit row and move its chain head, insert the outbox row; for a
final decision also update the case, insert the history row, a second audit row and
outbox row, and cancel the timers.

    python bench/approval_decision.py [--quick] [--decisions N] [--database-url URL]

Without --database-url the run works in a fresh schema of the local test database.
The issue's target: p99 < 20 ms on PostgreSQL. Figures, not a pass/fail test.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

POLICY = """
kind: approvals
key: bench-approvals
version: 1
case_type: referral
policies:
  - key: bench-review
    applies_to: {transitions: [begin_review]}
    steps:
      - name: two-reviewers
        reviewers: [{role: utilization_review}]
        quorum: 2
        remind_after: 1h
        escalate_after: 4h
        escalate_to: [{role: clinic_manager, at: clinic}]
"""


def _users(app: Any) -> tuple[Any, Any, Any]:
    from datetime import UTC, datetime

    from careloop.domain.access import Actor

    made = []
    people = (("rita.requester", "intake_coordinator"), ("uma.review", "utilization_review"),
              ("ulf.review", "utilization_review"))
    for name, role in people:
        with app.deps.uow() as uow:
            user_id = uow.accounts.add_user(name, name, None, [role], datetime.now(UTC),
                                            locations=["*"])
            uow.commit()
        made.append(Actor(user_id=user_id, username=name, roles=frozenset({role}),
                          locations=frozenset({"*"}), source_address="127.0.0.1"))
    return made[0], made[1], made[2]


def _open_requests(app: Any, requester: Any, count: int) -> list[int]:
    from careloop.services import approvals
    from careloop.services.cases import create_referral
    from careloop.services.referral_input import validate_referral

    ids = []
    for i in range(count):
        case, _ = create_referral(app.deps, requester, validate_referral(c.referral_payload(i)))
        ids += approvals.hold_transition(app.deps, requester, case.id, "begin_review", "ready")
    return ids


RAW_DECISION = [
    ("SELECT * FROM approval_requests WHERE id = %(rid)s FOR UPDATE", False),
    ("SELECT * FROM approval_decisions WHERE request_id = %(rid)s ORDER BY id", False),
    ("SELECT * FROM cases WHERE id = %(cid)s", False),
    ("INSERT INTO approval_decisions (request_id, step, group_name, decision, person_id, "
     "person_name, actor_id, actor_name, role, reason, decided_at) VALUES (%(rid)s, 0, 'g', "
     "'approve', 1, 'raw', 1, 'raw', 'utilization_review', '', now())", False),
    ("UPDATE approval_requests SET updated_at = now() WHERE id = %(rid)s", False),
]
RAW_AUDIT_OUTBOX = [
    ("INSERT INTO audit_log (chain, seq, occurred_at, actor_id, actor_name, action, outcome, "
     "case_id, patient_ref, data_category, source_address, reason, detail, prev_hash, hash) "
     "VALUES (99, %(seq)s, now(), 1, 'raw', 'approval.approve', 'success', %(cid)s, 'p', "
     "'approval', '', '', '{}', 'x', 'y')", True),
    ("INSERT INTO outbox (case_id, event_type, payload, idempotency_key, created_at, "
     "available_at, attempts) VALUES (%(cid)s, 'approval.decided', '{}', %(key)s, now(), "
     "now(), 0)", True),
]
RAW_FINAL = [
    ("UPDATE cases SET state = 'documentation_review', version = version + 1 "
     "WHERE id = %(cid)s", False),
    ("INSERT INTO case_history (case_id, from_state, to_state, transition, actor_id, "
     "actor_name, reason, occurred_at) VALUES (%(cid)s, 'intake_received', "
     "'documentation_review', 'begin_review', 1, 'raw', '', now())", False),
    ("UPDATE timers SET status = 'cancelled' WHERE case_id = %(cid)s AND status = 'pending' "
     "AND kind = 'approval'", False),
]


def raw_decision(connection: Any, request_id: int, case_id: int, kind: str, seq: int) -> int:
    """The same rows as one careloop decision, with plain SQL; returns the audit seq."""
    statements = RAW_DECISION + RAW_AUDIT_OUTBOX
    if kind == "final":
        statements += RAW_FINAL + RAW_AUDIT_OUTBOX
    for sql, bumps in statements:
        seq += 1 if bumps else 0
        params = {"rid": request_id, "cid": case_id, "seq": seq, "key": f"raw:{request_id}:{seq}"}
        connection.execute(sql, params)
    connection.execute("UPDATE audit_heads SET seq = %s WHERE chain = 99", (seq,))
    connection.commit()
    return seq


def bench(app: Any, url: str, requests: list[int], pairs: list[tuple[int, int]],
          reviewers: tuple[Any, Any]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """careloop's decision and the raw one alternate, so both see the same machine load."""
    import psycopg

    from careloop.services import approvals

    careloop: dict[str, list[float]] = {"intermediate": [], "final": []}
    raw: dict[str, list[float]] = {"intermediate": [], "final": []}
    with psycopg.connect(c.pg_conninfo(url.split("?")[0]), options=_options(url)) as connection:
        connection.execute("INSERT INTO audit_heads (chain, seq, hash) VALUES (99, 0, 'x') "
                           "ON CONFLICT DO NOTHING")
        row = connection.execute("SELECT seq FROM audit_heads WHERE chain = 99").fetchone()
        seq = int(row[0]) if row else 0
        connection.commit()
        for request_id, (raw_id, raw_case) in zip(requests, pairs, strict=True):
            for kind, reviewer in zip(("intermediate", "final"), reviewers, strict=True):
                start = time.perf_counter()
                approvals.decide(app.deps, reviewer, request_id, "approve")
                careloop[kind].append(time.perf_counter() - start)
                start = time.perf_counter()
                seq = raw_decision(connection, raw_id, raw_case, kind, seq)
                raw[kind].append(time.perf_counter() - start)
    return careloop, raw


def _options(url: str) -> str:
    # The bench schema travels in the SQLAlchemy URL as options=-csearch_path=...
    if "options=" not in url:
        return ""
    return url.split("options=", 1)[1].replace("%3D", "=").split("&")[0]


def _report(label: str, timings: dict[str, list[float]]) -> float:
    every = timings["intermediate"] + timings["final"]
    c.line(f"{label}: all {len(every)} decisions", c.latency_ms(every))
    c.line(f"{label}: intermediate (quorum not yet met)", c.latency_ms(timings["intermediate"]))
    c.line(f"{label}: final (+ transition carried out)", c.latency_ms(timings["final"]))
    return c.percentile(every, 99)


def run(url: str, decisions: int) -> None:
    app = c.build_app(url)
    from careloop.services.ports import SystemClock

    app.automation.store(POLICY, "bench-approvals.yaml", "bench", SystemClock().now(),
                         activate=True)
    requester, first, second = _users(app)
    # Half the requests for careloop's decisions, half for the raw SQL ones.
    requests = _open_requests(app, requester, decisions)
    with app.deps.read_uow() as uow:
        pairs = [(r, uow.approvals.get(r).case_id) for r in requests[1::2]]
    mine = requests[0::2]
    warm = max(1, len(mine) // 20)  # compile the policy, warm the pool and the caches
    bench(app, url, mine[:warm], pairs[:warm], (first, second))
    careloop, raw = bench(app, url, mine[warm:], pairs[warm:], (first, second))
    app.engine.dispose()
    p99 = _report("careloop", careloop)
    raw_p99 = _report("raw SQL", raw)
    c.ratio_line("careloop p99 vs raw p99", p99, raw_p99, higher_is_better=False)
    c.target_line("approval decision p99 < 20 ms", p99 < 0.020, f"{p99 * 1000:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL URL (default: a fresh schema of the test database)")
    args = c.parse_args(__doc__.splitlines()[0], parser)
    decisions = 200 if args.quick else args.decisions
    problem = c.pg_problem()
    if problem is not None and args.database_url is None:
        print(f"PostgreSQL unreachable ({problem}); nothing measured")
        return
    c.header("approval decision, end to end (PostgreSQL)", decisions=decisions)
    schema = c.pg_schema("bench_approvals") if args.database_url is None else nullcontext(
        args.database_url)
    with schema as url:
        run(url, decisions)


if __name__ == "__main__":
    main()
