"""Property: random transitions by random actors never reach a state the definition
forbids, never lose an audit entry, and keep the hash chain valid (both databases)."""

import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, func, select, text

from careloop.adapters.db.audit_store import verify_audit_log
from careloop.adapters.db.tables import audit_log
from careloop.bootstrap import App
from careloop.domain.access import Role
from careloop.domain.errors import CareloopError
from careloop.services import attachments, queries
from careloop.services.cases import create_referral, transition_case
from careloop.services.ports import ManualClock
from careloop.services.referral_input import ReferralChanges, validate_referral
from tests.conftest import PG_URL, START, actor, make_app, referral_payload, require_postgres


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shared_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[App]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('prop') / 'p.db'}"
        app = make_app(url, ManualClock(START))
        yield app
        app.engine.dispose()
        return
    require_postgres()
    schema = f"p_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    app = make_app(f"{PG_URL}?options=-csearch_path%3D{schema}", ManualClock(START))
    yield app
    app.engine.dispose()
    with admin.connect() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


ROLES = [role.value for role in Role]
TRANSITIONS = [
    "begin_review",
    "request_information",
    "information_received",
    "documentation_complete",
    "payer_unreachable",
    "retry_eligibility",
    "eligible_authorization_required",
    "eligible_no_authorization",
    "not_eligible",
    "authorization_approved",
    "authorization_denied",
    "triage_accept",
    "triage_decline",
    "schedule_appointment",
    "reschedule",
    "notify_patient",
    "complete",
    "close_unresponsive",
    "cancel",
    "no_such_transition",
]
step = st.tuples(
    st.sampled_from(TRANSITIONS),
    st.sampled_from(ROLES),
    st.sampled_from([None, "", "patient asked"]),
    st.booleans(),
)


def _audit_count(app: App) -> int:
    with app.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(audit_log)).scalar_one())


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(step, min_size=1, max_size=25), with_letter=st.booleans())
def test_random_transitions_respect_the_definition_and_the_audit_log(
    shared_app: App, steps: list[tuple[str, str, str | None, bool]], with_letter: bool
) -> None:
    app = shared_app
    admin = actor(Role.ADMINISTRATOR, 1, "admin")
    case, _ = create_referral(app.deps, admin, validate_referral(referral_payload()))
    workflow = app.deps.workflows.get(case.workflow_key, case.workflow_version)
    if with_letter:
        attachments.add_document(
            app.deps, admin, case.id, "referral_letter", "l.pdf", "application/pdf", b"%PDF-1.4 x"
        )
    expected_audit = _audit_count(app)
    state, version = case.state, case.version
    for name, role, reason, set_fields in steps:
        changes = (
            ReferralChanges(specialist="Dr. X", authorization_number="AUTH1", appointment_at=START)
            if set_fields
            else None
        )
        try:
            moved = transition_case(
                app.deps, actor(role, 9, f"u.{role}"), case.id, name, version, reason, changes
            )
        except CareloopError:
            current, _ = queries.get_case(app.deps, admin, case.id)
            expected_audit += 1  # the read above is audited
            assert (current.state, current.version) == (state, version)
            continue
        expected_audit += 1
        transition = workflow.transitions[name]
        assert state in transition.sources, f"{name} applied from {state}"
        assert role in transition.roles, f"{role} applied {name}"
        assert not workflow.states[state].terminal
        assert moved.state == transition.target and moved.version == version + 1
        state, version = moved.state, moved.version
        assert state in workflow.states
    assert _audit_count(app) == expected_audit
    assert all(result.ok for result in verify_audit_log(app.engine))
