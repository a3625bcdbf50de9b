"""Shared fixtures: real SQLite files and a real PostgreSQL, a clock tests can move.

PostgreSQL comes from CARELOOP_TEST_PG_URL (default: the local server, database
``test``). Each test gets its own schema, so tests never see each other's rows. In CI
(CI=true) an unreachable PostgreSQL fails the run instead of skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from careloop.bootstrap import App, build, build_worker, migrate
from careloop.config import Settings
from careloop.domain.access import Actor, Role
from careloop.engine.worker import Worker
from careloop.services.ports import ManualClock

PG_URL = os.environ.get("CARELOOP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday morning


def _postgres_available() -> str | None:
    try:
        engine = create_engine(PG_URL)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as error:
        return str(error).splitlines()[0]
    return None


_PG_PROBLEM = _postgres_available()


def require_postgres() -> None:
    if _PG_PROBLEM is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL must run in CI but is unreachable: {_PG_PROBLEM}")
    pytest.skip(f"PostgreSQL unreachable: {_PG_PROBLEM}")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'careloop.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{separator}options=-csearch_path%3D{schema}"
    with admin.connect() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Runs the test once on SQLite and once on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(name)
    return url


def make_app(url: str, clock: ManualClock, **settings: object) -> App:
    app = build(
        Settings(database_url=url, environment="test", **settings),  # type: ignore[arg-type]
        clock,
        check_migrated=False,
    )
    migrate(app)
    return app


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def app(database_url: str, clock: ManualClock) -> Iterator[App]:
    application = make_app(database_url, clock)
    yield application
    application.engine.dispose()


@pytest.fixture
def worker(app: App) -> Iterator[Worker]:
    """The worker's handlers and loops over ``app``, as `careloop worker` builds them."""
    runner = build_worker(app)
    yield runner
    runner.sender.close()  # type: ignore[attr-defined]


@pytest.fixture
def sqlite_app(sqlite_url: str, clock: ManualClock) -> Iterator[App]:
    application = make_app(sqlite_url, clock)
    yield application
    application.engine.dispose()


@pytest.fixture
def pg_app(postgres_url: str, clock: ManualClock) -> Iterator[App]:
    """PostgreSQL only: for what SQLite's one writer lock makes impossible to provoke."""
    application = make_app(postgres_url, clock)
    yield application
    application.engine.dispose()


def actor(role: Role | str, user_id: int = 1, username: str | None = None) -> Actor:
    name = str(role.value if isinstance(role, Role) else role)
    return Actor(
        user_id=user_id,
        username=username or name,
        roles=frozenset({name}),
        source_address="127.0.0.1",
        locations=frozenset({"*"}),
    )


ADMIN = actor(Role.ADMINISTRATOR, 1, "ada.admin")
INTAKE = actor(Role.INTAKE_COORDINATOR, 2, "ian.intake")
COORDINATOR = actor(Role.REFERRAL_COORDINATOR, 3, "cora.coordinator")
TRIAGE = actor(Role.CLINICAL_TRIAGE, 4, "dr.tim.triage")
REVIEWER = actor(Role.UTILIZATION_REVIEW, 5, "uma.review")
SCHEDULER = actor(Role.SCHEDULER, 6, "sid.scheduler")
FINANCE = actor(Role.FINANCE, 7, "fin.finance")
AUDITOR = actor(Role.AUDITOR, 8, "aud.auditor")


def referral_payload(**overrides: object) -> dict[str, object]:
    """A complete, valid referral; override any top-level field."""
    payload: dict[str, object] = {
        "patient": {
            "family_name": "Okafor",
            "given_name": "Ada",
            "birth_date": "1961-04-12",
            "sex": "female",
            "mrn": "MRN100234",
            "member_id": "M55501234",
            "phone": "+1 555 201 3344",
            "postal_code": "02139",
        },
        "referring_provider": {
            "name": "Dr. Lena Rossi",
            "npi": "1234567893",
            "organization": "Harbor Primary Care",
        },
        "specialty": "cardiology",
        "urgency": "urgent",
        "reason": "Exertional chest pain, abnormal ECG",
        "diagnoses": ["R07.9", "I10"],
        "payer": {"name": "Blue Harbor Health", "plan": "PPO", "member_id": "P1234567"},
        "network_status": "in_network",
        "clinic": "riverside-clinic",
        "channel": "fax",
    }
    payload.update(overrides)
    return payload


def new_case(app: App) -> int:
    """A valid referral created by the intake coordinator; its id."""
    from careloop.services.cases import create_referral
    from careloop.services.referral_input import validate_referral

    case, _ = create_referral(app.deps, INTAKE, validate_referral(referral_payload()))
    return case.id
