"""Crash test: kill -9 of real `careloop worker` processes while deliveries and timers are
in flight, restart, and account for every event.

Two worker processes relay referral events, fan them out to a real HTTP receiver on
loopback and fire timers; once deliveries are flowing both are killed with SIGKILL and
two fresh ones take over. The receiver deduplicates by webhook-id, as the Standard
Webhooks contract asks consumers to. Afterwards every event must be delivered or
dead-lettered (lost = 0), no webhook-id may have taken effect twice (duplicate effects
= 0), and every timer due by the end must have fired exactly once. PostgreSQL only:
several workers against one database is the PostgreSQL deployment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from careloop.adapters.cel_conditions import compile_condition
from careloop.adapters.db.automation_tables import timers, webhook_deliveries
from careloop.adapters.db.tables import outbox
from careloop.adapters.webhooks import check_target, new_secret
from careloop.bootstrap import App, build, migrate
from careloop.config import Settings
from careloop.domain.webhook_policy import MAX_ATTEMPTS
from careloop.engine.webhooks import body_of, matches_event_type
from careloop.services import automation_admin as admin
from careloop.services.cases import create_referral
from careloop.services.referral_input import validate_referral
from tests.conftest import ADMIN, INTAKE, referral_payload
from tests.support.crash_receiver import DedupingEndpoint
from tests.support.receivers import Receiver, respond

pytestmark = pytest.mark.postgres

REFERRALS = 200
LATE_REFERRALS = 50  # created just before the kill, so the relay is mid-batch when it lands
TIMERS = 40  # half due while the first workers run, half across the kill and restart
DOOMED = 10  # deliveries on their last scheduled attempt to an endpoint that always fails
EVENT_TYPES = ["case.*", "timer.*"]
KILL_AFTER_EFFECTS = 60
WORKER_START = [sys.executable, "-c", "from careloop.cli import main; main()", "worker"]


def test_killed_workers_lose_no_event_duplicate_no_effect_and_fire_each_due_timer_once(
    postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = build(
        Settings(database_url=postgres_url, environment="test", webhooks_allow_private=True),
        check_migrated=False,
    )
    migrate(app)
    try:
        with Receiver(default=respond(404)) as receiver, _workers(postgres_url, tmp_path) as fleet:
            endpoint, doomed = _subscribe(app, receiver)
            run = _crash_and_recover(app, fleet, endpoint)
            result = _account(app, endpoint, doomed, run.settled_at)
        with capsys.disabled():
            print(f"\n{result.summary()}")
            print(
                f"crash test detail: at kill {run.at_kill}; receiver dropped "
                f"{endpoint.redeliveries} redeliveries and refused {len(endpoint.refused)} "
                f"ids once; worker loop errors={fleet.loop_errors()}"
            )
    finally:
        app.engine.dispose()
    assert result.lost == [], f"{len(result.lost)} lost, first: {result.lost[:10]}"
    assert result.duplicate_effects == [], result.duplicate_effects[:10]
    assert result.unexplained_effects == [], result.unexplained_effects[:10]
    assert result.dead_ids == doomed, "only the deliveries on their last attempt may go dead"
    assert result.timers_fired_once == result.timers_due, result.timer_problems[:10]
    assert set(run.timer_ids) <= result.due_timer_ids, "the test's own timers were all due"
    assert endpoint.bad_signatures == 0
    assert receiver.errors == []


@dataclass(frozen=True)
class _Run:
    timer_ids: list[int]
    at_kill: dict[str, int]
    settled_at: datetime


def _crash_and_recover(app: App, fleet: _Fleet, endpoint: DedupingEndpoint) -> _Run:
    _create_referrals(app, range(REFERRALS - LATE_REFERRALS))
    fleet.start(2)
    early = _plan_timers(app, "early", datetime.now(UTC), spacing=0.2)
    fleet.wait_for(lambda: len(endpoint.effects) >= KILL_AFTER_EFFECTS, 30, "first deliveries")
    # New referrals keep the relay mid-batch at the kill; the late timers come due across
    # it: a few fire before, the rest while no worker runs or after the restart.
    _create_referrals(app, range(REFERRALS - LATE_REFERRALS, REFERRALS))
    late = _plan_timers(app, "late", datetime.now(UTC), spacing=0.3)
    fleet.wait_for(lambda: _fired(app, late) >= 2, 10, "late timers firing")
    at_kill = _progress(app)
    fleet.kill()
    at_kill["deliveries leased"] = _expire_leases(app)
    fleet.start(2)
    settled_at = fleet.wait_until_settled(app, max(_due_times(app, early + late)), 40)
    fleet.stop()
    return _Run(early + late, at_kill, settled_at)


# -- setup -------------------------------------------------------------------------------


def _subscribe(app: App, receiver: Receiver) -> tuple[DedupingEndpoint, set[str]]:
    """The deduplicating consumer of every case and timer event, and a dead endpoint that
    has DOOMED deliveries on their final attempt (as after a day of failures), so the
    dead-letter path runs within the test."""
    tools = admin.WebhookTools(new_secret, check_target, compile_condition, allow_private=True)
    values = {"url": receiver.url_for("/hook"), "event_types": EVENT_TYPES, "filter": None}
    _, secret = admin.create_subscription(app.deps, tools, ADMIN, {"name": "ehr", **values})
    # About one message in five is refused once with 503, so retries are pending too.
    endpoint = DedupingEndpoint(
        [secret], fail_first=lambda key: zlib.crc32(key.encode()) % 5 == 0, answer_delay=0.02
    )
    receiver.route("/hook", endpoint.behaviour)
    receiver.route("/doomed", respond(500, b"down for good"))
    doomed_values = {"url": receiver.url_for("/doomed"), "event_types": ["archive.*"]}
    row, _ = admin.create_subscription(app.deps, tools, ADMIN, {"name": "archive", **doomed_values})
    now = datetime.now(UTC)
    keys = {f"archive:{number}" for number in range(DOOMED)}
    rows = [_final_attempt(int(row["id"]), key, now) for key in sorted(keys)]
    with app.deps.uow() as work:
        assert work.webhooks.enqueue(rows) == DOOMED
        work.commit()
    return endpoint, keys


def _final_attempt(subscription_id: int, key: str, now: datetime) -> dict[str, Any]:
    return {
        "subscription_id": subscription_id,
        "message_id": key,
        "event_type": "archive.exported",
        "case_id": None,
        "body": body_of("archive.exported", key, now, {"export": key}),
        "status": "pending",
        "attempts": MAX_ATTEMPTS - 1,
        "next_attempt_at": now,
        "leased_until": None,
        "created_at": now,
    }


def _create_referrals(app: App, numbers: range) -> None:
    base = referral_payload()["patient"]
    assert isinstance(base, dict)
    for number in numbers:
        # Distinct patients: the same patient 200 times would make every referral a
        # possible duplicate of all the others.
        patient = {
            **base,
            "family_name": f"Crashtest{number:04d}",
            "mrn": f"MRN{number:06d}",
            "member_id": f"M{number:08d}",
            "birth_date": f"19{40 + number % 50}-0{1 + number % 9}-1{number % 9}",
        }
        payload = validate_referral(referral_payload(patient=patient))
        create_referral(app.deps, INTAKE, payload)


def _plan_timers(app: App, group: str, start: datetime, spacing: float) -> list[int]:
    """TIMERS // 2 timers due from ``start``, one every ``spacing`` seconds."""
    now = datetime.now(UTC)
    with app.deps.uow() as work:
        for number in range(TIMERS // 2):
            planned = work.timers.plan(
                {
                    "case_id": None,
                    "kind": "state",
                    "key": f"crash-test:{group}:{number}",
                    "name": f"crash-test-{group}",
                    "due_at": start + timedelta(seconds=spacing * (number + 1)),
                    "payload": {"group": group, "number": number},
                    "created_at": now,
                }
            )
            assert planned
        work.commit()
    with app.engine.connect() as connection:
        query = select(timers.c.id).where(timers.c.name == f"crash-test-{group}")
        return sorted(int(timer_id) for timer_id in connection.execute(query).scalars())


def _fired(app: App, timer_ids: list[int]) -> int:
    with app.engine.connect() as connection:
        query = select(func.count()).where(timers.c.id.in_(timer_ids), timers.c.status == "fired")
        return int(connection.execute(query).scalar_one())


def _progress(app: App) -> dict[str, int]:
    """How far the first workers got: what the kill interrupts."""
    with app.engine.connect() as connection:
        row = connection.execute(
            select(
                select(func.count()).where(outbox.c.published_at.is_not(None)).scalar_subquery(),
                select(func.count()).where(outbox.c.published_at.is_(None)).scalar_subquery(),
                select(func.count())
                .where(webhook_deliveries.c.status != "pending")
                .scalar_subquery(),
                select(func.count())
                .where(webhook_deliveries.c.status == "pending")
                .scalar_subquery(),
                select(func.count())
                .where(timers.c.status == "pending", timers.c.name.startswith("crash-test"))
                .scalar_subquery(),
            )
        ).one()
    names = ("events published", "events pending", "deliveries done", "deliveries pending")
    return {**dict(zip(names, row[:4], strict=True)), "test timers pending": row[4]}


def _due_times(app: App, timer_ids: list[int]) -> list[datetime]:
    with app.engine.connect() as connection:
        query = select(timers.c.due_at).where(timers.c.id.in_(timer_ids))
        return list(connection.execute(query).scalars())


def _expire_leases(app: App) -> int:
    """The killed workers' leases would run out after engine.webhooks.LEASE (2 minutes),
    which is not configurable; ending them now is what the clock would do later, and
    the new workers then re-send those deliveries under the same webhook-id."""
    now = datetime.now(UTC)
    with app.engine.begin() as connection:
        result = connection.execute(
            update(webhook_deliveries)
            .where(
                webhook_deliveries.c.status == "pending", webhook_deliveries.c.leased_until > now
            )
            .values(leased_until=now)
        )
    return int(result.rowcount or 0)


# -- the worker processes ----------------------------------------------------------------


@dataclass
class _Fleet:
    database_url: str
    log_dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def start(self, count: int) -> None:
        env = {
            **os.environ,
            "CARELOOP_DATABASE_URL": self.database_url,
            "CARELOOP_ENVIRONMENT": "test",
            "CARELOOP_WEBHOOKS_ALLOW_PRIVATE": "true",
            "CARELOOP_WORKER_POLL_SECONDS": "0.2",
            "CARELOOP_WEBHOOK_TIMEOUT_SECONDS": "5",
        }
        for _ in range(count):
            log = self.log_dir / f"worker-{len(self.logs) + 1}.log"
            with log.open("wb") as output:
                process = subprocess.Popen(
                    WORKER_START, env=env, stdout=output, stderr=subprocess.STDOUT
                )
            self.processes.append(process)
            self.logs.append(log)

    def kill(self) -> None:
        """kill -9: no shutdown code runs, whatever the worker was doing."""
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
        for process in self.processes:
            process.wait(10)
        self.processes.clear()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)
        self.processes.clear()

    def wait_for(self, condition: Callable[[], bool], seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            self._check_alive()
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {seconds} s\n{self.log_tails()}")
            time.sleep(0.05)

    def wait_until_settled(self, app: App, after: datetime, seconds: float) -> datetime:
        """Poll until no event, delivery or due timer is pending; returns that moment."""
        deadline = time.monotonic() + seconds
        while True:
            self._check_alive()
            now = datetime.now(UTC)
            counts = _pending(app, now)
            if now > after and not any(counts.values()):
                return now
            if time.monotonic() > deadline:
                pytest.fail(f"still pending after {seconds} s: {counts}\n{self.log_tails()}")
            time.sleep(0.25)

    def _check_alive(self) -> None:
        if any(process.poll() is not None for process in self.processes):
            pytest.fail(f"a worker exited on its own\n{self.log_tails()}")

    def loop_errors(self) -> int:
        return sum(log.read_text(errors="replace").count("loop failed") for log in self.logs)

    def log_tails(self, lines: int = 15) -> str:
        return "\n".join(
            f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
            for log in self.logs
        )


@contextmanager
def _workers(database_url: str, log_dir: Path) -> Iterator[_Fleet]:
    fleet = _Fleet(database_url, log_dir)
    try:
        yield fleet
    finally:
        fleet.kill()  # no worker outlives the test, whatever failed


def _pending(app: App, now: datetime) -> dict[str, int]:
    """What is left to do, read in one statement (one snapshot)."""
    events = (
        select(func.count())
        .where(outbox.c.published_at.is_(None), outbox.c.dead_at.is_(None))
        .scalar_subquery()
    )
    deliveries = (
        select(func.count()).where(webhook_deliveries.c.status == "pending").scalar_subquery()
    )
    due = (
        select(func.count())
        .where(timers.c.status == "pending", timers.c.due_at <= now)
        .scalar_subquery()
    )
    with app.engine.connect() as connection:
        row = connection.execute(select(events, deliveries, due)).one()
    return {"events": row[0], "deliveries": row[1], "due timers": row[2]}


# -- the accounting ----------------------------------------------------------------------


@dataclass
class _Result:
    sent: int
    delivered: int
    dead_ids: set[str]
    lost: list[str]
    duplicate_effects: list[str]
    unexplained_effects: list[str]  # applied by the receiver, not delivered by careloop
    due_timer_ids: set[int]
    timers_fired_once: int
    timer_problems: list[str]

    @property
    def timers_due(self) -> int:
        return len(self.due_timer_ids)

    def summary(self) -> str:
        return (
            f"crash test: events sent={self.sent} delivered={self.delivered} "
            f"dead-lettered={len(self.dead_ids)} lost={len(self.lost)} "
            f"duplicate effects={len(self.duplicate_effects)} "
            f"timers due={self.timers_due} fired once={self.timers_fired_once}"
        )


def _account(app: App, endpoint: DedupingEndpoint, doomed: set[str], cutoff: datetime) -> _Result:
    with app.engine.connect() as connection:
        events = connection.execute(select(outbox)).mappings().all()
        deliveries = connection.execute(select(webhook_deliveries)).mappings().all()
        due = (
            connection.execute(
                select(timers).where(timers.c.due_at <= cutoff, timers.c.status != "cancelled")
            )
            .mappings()
            .all()
        )
    effects = endpoint.effects
    # An event the relay dead-lettered fans out to nobody: it counts as dead-lettered.
    relayed = [e for e in events if e["dead_at"] is None]
    wanted = {
        e["idempotency_key"] for e in relayed if matches_event_type(EVENT_TYPES, e["event_type"])
    }
    status = {d["message_id"]: d["status"] for d in deliveries}
    status |= {e["idempotency_key"]: "dead" for e in events if e["dead_at"] is not None}
    lost = [f"event {e['id']} never published" for e in relayed if e["published_at"] is None]
    lost += [f"{key}: no delivery" for key in sorted((wanted | doomed) - status.keys())]
    lost += [
        f"{key}: {state}" for key, state in status.items() if state not in ("delivered", "dead")
    ]
    delivered = {key for key, state in status.items() if state == "delivered"}
    lost += [f"{key}: delivered, never applied" for key in sorted(delivered - effects.keys())]
    duplicate_effects = [f"{key}: applied twice" for key in endpoint.applied_more_than_once]
    duplicate_effects += _same_effect_under_two_ids(effects)
    fired_once, problems = _check_timers(due, events, effects)
    return _Result(
        sent=len(wanted | doomed) + len(events) - len(relayed),
        delivered=len(delivered & effects.keys()),
        dead_ids={key for key, state in status.items() if state == "dead"},
        lost=lost,
        duplicate_effects=duplicate_effects,
        unexplained_effects=sorted(effects.keys() - delivered),
        due_timer_ids={int(t["id"]) for t in due},
        timers_fired_once=fired_once,
        timer_problems=problems,
    )


def _same_effect_under_two_ids(effects: dict[str, dict[str, Any]]) -> list[str]:
    """Dedup by webhook-id only helps if one happening keeps one id: a case created or a
    timer fired twice under fresh ids would slip past the consumer, so look for those."""
    happenings: Counter[tuple[str, object]] = Counter()
    for body in effects.values():
        if body["type"] == "case.created":
            happenings["case created", body["data"]["case_id"]] += 1
        elif body["type"] == "timer.fired":
            happenings["timer fired", body["data"]["timer_id"]] += 1
    return [f"{what} {ident}: {n} times" for (what, ident), n in happenings.items() if n > 1]


def _check_timers(
    due: list[Any], events: list[Any], effects: dict[str, dict[str, Any]]
) -> tuple[int, list[str]]:
    firings = Counter(e["idempotency_key"] for e in events if e["event_type"] == "timer.fired")
    applied = Counter(b["data"]["timer_id"] for b in effects.values() if b["type"] == "timer.fired")
    problems = []
    for timer in due:
        key = f"timer:{timer['id']}"
        if timer["status"] != "fired":
            problems.append(f"timer {timer['id']} is {timer['status']}")
        elif firings[key] != 1 or applied[timer["id"]] != 1:
            problems.append(
                f"timer {timer['id']}: {firings[key]} events, {applied[timer['id']]} effects"
            )
    return len(due) - len(problems), problems
