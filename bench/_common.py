"""Helpers shared by the careloop benchmarks (plain scripts, not pytest tests).

Every benchmark prints careloop's figure beside a raw baseline measured in the same run
and the ratio between them. Run them from the repository root:

    python bench/intake_service.py [--quick]
    python bench/intake_http.py [--quick]
    python bench/work_queue.py [--quick] [--backend sqlite|postgres|both] [--rows N]

PostgreSQL comes from CARELOOP_BENCH_PG_URL (default: the local server, database
``test``); each run works in a schema of its own and drops it afterwards.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PG_URL = os.environ.get(
    "CARELOOP_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

# The shipped referral workflow's 14 states, with a plausible share of a large, long-lived
# database: most old referrals have reached a terminal state.
STATE_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("intake_received", 4), ("documentation_review", 4), ("awaiting_information", 3),
    ("eligibility_verification", 3), ("eligibility_pending", 2),
    ("authorization_pending", 4), ("clinical_triage", 3), ("specialist_assignment", 3),
    ("appointment_scheduled", 6), ("patient_notified", 4), ("completed", 40),
    ("declined", 6), ("cancelled", 8), ("closed", 10),
)
OPEN_STATES = tuple(s for s, _ in STATE_WEIGHTS[:10])
CLINICS = ("riverside-clinic", "harbor-medical-center", "northside-health")
SPECIALTIES = (
    "cardiology", "dermatology", "endocrinology", "gastroenterology", "neurology",
    "oncology", "orthopedics", "pulmonology",
)
FAMILY_NAMES = ("Okafor", "Nguyen", "Garcia", "Smith", "Kowalski", "Haddad", "Ibrahim",
                "Johansson", "Rossi", "Tanaka", "Murphy", "Silva", "Chen", "Dubois")
GIVEN_NAMES = ("Ada", "Bao", "Carmen", "David", "Ewa", "Farah", "Gabriel", "Hana", "Ivan",
               "Julia", "Kenji", "Liam", "Maria", "Noor")
REASONS = ("Exertional chest pain, abnormal ECG", "Persistent rash, biopsy advised",
           "Uncontrolled type 2 diabetes", "Chronic abdominal pain and weight loss",
           "Recurrent migraine with aura", "Suspicious lung nodule on CT",
           "Knee pain after fall, suspected meniscal tear", "Worsening dyspnoea on exertion")
URGENCIES = ("routine", "routine", "routine", "urgent", "emergent")
CHANNELS = ("fax", "email", "portal", "fhir", "hl7", "web", "api")


def referral_payload(i: int = 0) -> dict[str, Any]:
    """A complete, valid referral (the shape of tests/conftest.py's), varied by ``i``."""
    return {
        "patient": {"family_name": FAMILY_NAMES[i % 14], "given_name": GIVEN_NAMES[i % 13],
                    "birth_date": f"{1930 + i % 80}-{1 + i % 12:02d}-{1 + i % 28:02d}",
                    "sex": ("female", "male")[i % 2], "mrn": f"MRN{100000 + i}",
                    "member_id": f"M{55500000 + i}", "phone": "+1 555 201 3344",
                    "postal_code": "02139"},
        "referring_provider": {"name": "Dr. Lena Rossi", "npi": "1234567893",
                               "organization": "Harbor Primary Care"},
        "specialty": SPECIALTIES[i % len(SPECIALTIES)],
        "urgency": URGENCIES[i % len(URGENCIES)],
        "reason": REASONS[i % len(REASONS)],
        "diagnoses": ["R07.9", "I10"],
        "payer": {"name": "Blue Harbor Health", "plan": "PPO", "member_id": f"P{1234567 + i}"},
        "network_status": "in_network",
        "clinic": CLINICS[i % len(CLINICS)],
        "channel": CHANNELS[i % len(CHANNELS)],
    }


def search_text(payload: dict[str, Any]) -> str:
    """What careloop denormalises into cases.search_text (for the raw baselines)."""
    patient, provider = payload["patient"], payload["referring_provider"]
    parts = (patient["family_name"], patient["given_name"], patient.get("mrn"),
             patient.get("member_id"), payload["reason"], provider["name"],
             payload["specialty"], payload["clinic"])
    return " ".join(p for p in parts if p).lower()


def parse_args(description: str, parser: argparse.ArgumentParser | None = None
               ) -> argparse.Namespace:
    parser = parser or argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="a few-second smoke run (figures are not meaningful)")
    return parser.parse_args()


def header(title: str, **facts: object) -> None:
    cpus = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"== {title} ==")
    print(f"   python {platform.python_version()} on {platform.machine()}, {cpus} CPUs, "
          f"load average {load:.2f} at start" + "".join(f", {k}={v}" for k, v in facts.items()))


def python_speed() -> float:
    """Seconds a pure-Python loop of ten million additions takes here and now: the same
    code's figures differ between machines, and on shared ones from hour to hour, by as
    much as this does."""
    t0, total = time.perf_counter(), 0
    for i in range(10_000_000):
        total += i
    return time.perf_counter() - t0


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc); NaN elsewhere or once it has ended."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def postgres_cpu_seconds() -> dict[int, float] | None:
    """CPU time used so far by each running process named postgres, by pid; None where
    that cannot be seen (not Linux, or the server is elsewhere). Sessions that have ended
    are not there: read it while they are still open, and compare readings with
    ``postgres_cpu_spent``."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    used: dict[int, float] = {}
    for entry in proc.iterdir():
        try:
            if not entry.name.isdigit() or (entry / "comm").read_text().strip() != "postgres":
                continue
        except OSError:
            continue  # the process ended meanwhile
        seconds = process_cpu_seconds(int(entry.name))
        if seconds == seconds:  # not NaN: it had not ended yet
            used[int(entry.name)] = seconds
    return used or None


def postgres_cpu_spent(before: dict[int, float] | None,
                       after: dict[int, float] | None) -> float | None:
    """What the server's processes used between two readings: by the processes still
    running at the second (one started since counts from zero), so a session that ended
    in between takes nothing away."""
    if before is None or after is None:
        return None
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


# --- databases ---------------------------------------------------------------------


def pg_problem() -> str | None:
    """None when PostgreSQL answers, else the first line of the error."""
    import psycopg

    try:
        with psycopg.connect(pg_conninfo(PG_URL), connect_timeout=3) as connection:
            connection.execute("SELECT 1")
    except Exception as error:  # any failure means: skip the PostgreSQL part
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return None


def pg_conninfo(sqlalchemy_url: str) -> str:
    """The libpq URL psycopg takes for a SQLAlchemy ``postgresql+psycopg://`` URL."""
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


@contextmanager
def pg_schema(prefix: str) -> Iterator[str]:
    """A fresh schema for this run; yields a SQLAlchemy URL whose search_path is it."""
    import psycopg

    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = pg_conninfo(PG_URL)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


@contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        yield Path(name)


def sqlite_connect(path: Path | str) -> Any:
    """A raw sqlite3 connection with careloop's pragmas (adapters/db/engine.py)."""
    import sqlite3

    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                 timeout=30)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA busy_timeout=30000")
    return connection


def build_app(url: str, *, migrate: bool = True, **settings: Any) -> Any:
    """careloop wired on ``url`` (migrated and the shipped workflow stored by default)."""
    from careloop import bootstrap
    from careloop.config import Settings
    from careloop.services.ports import SystemClock

    app = bootstrap.build(Settings(database_url=url, environment="test", **settings),
                          SystemClock(), check_migrated=not migrate)
    if migrate:
        bootstrap.migrate(app)
    return app


# --- figures -----------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of ``values`` (need not be sorted)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def latency_ms(values: Sequence[float]) -> str:
    """'p50 x ms, p99 y ms' for latencies given in seconds."""
    return (f"p50 {percentile(values, 50) * 1000:.2f} ms, "
            f"p99 {percentile(values, 99) * 1000:.2f} ms")


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def line(label: str, value: str) -> None:
    print(f"   {label:<46} {value}")


def ratio_line(label: str, careloop: float, baseline: float, *, higher_is_better: bool = True,
               target_pct: float | None = None, baseline_name: str = "raw") -> None:
    """careloop as a percentage of the baseline (throughput) or a multiple (latency)."""
    if higher_is_better:
        pct = 100.0 * careloop / baseline if baseline else float("nan")
        text = f"{pct:.1f} % of {baseline_name}"
        if target_pct is not None:
            text += f"   (target >= {target_pct:.0f} %: {'met' if pct >= target_pct else 'MISSED'})"
    else:
        text = f"{careloop / baseline:.2f}x {baseline_name}" if baseline else "n/a"
    line(label, text)


def target_line(label: str, ok: bool, detail: str) -> None:
    line(label, f"{detail}: {'met' if ok else 'MISSED'}")


def run_processes(target: Any, url: str, workers: int, timeout: float
                  ) -> tuple[list[Any], float]:
    """Run ``target(url, ready, go, results)`` in ``workers`` spawned processes released
    by one start signal; returns each process's result tuple and the start time. A result
    whose first item is "error" fails the run."""
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=target, args=(url, ready, go, results), daemon=True)
             for _ in range(workers)]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=120)
    started = time.time()
    go.set()
    outcomes = [results.get(timeout=timeout) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    failed = [o[1] for o in outcomes if o[0] == "error"]
    if failed:
        raise RuntimeError(f"a worker process failed: {failed[0]}")
    return outcomes, started
