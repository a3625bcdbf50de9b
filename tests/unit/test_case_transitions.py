"""The case aggregate refuses anything the workflow definition forbids (no database)."""

from datetime import UTC, datetime, timedelta

import pytest

from careloop.adapters.definitions import load_workflow_text, shipped_definitions
from careloop.domain.case import Case
from careloop.domain.errors import GuardFailed, TransitionNotAllowed
from tests.conftest import ADMIN, INTAKE, TRIAGE, referral_payload

WORKFLOW = load_workflow_text(
    dict(shipped_definitions())["careloop/definitions/referral.yaml"], "referral.yaml"
)
NOW = datetime(2026, 3, 2, 9, tzinfo=UTC)


def _case(state: str = "intake_received", **data: object) -> Case:
    return Case(
        id=1,
        case_type="referral",
        workflow_key=WORKFLOW.key,
        workflow_version=1,
        state=state,
        version=1,
        data=referral_payload(**data),
        created_at=NOW,
        updated_at=NOW,
        state_entered_at=NOW,
    )


def test_intake_coordinator_begins_review_and_an_event_is_recorded() -> None:
    case = _case()
    case.transition(WORKFLOW, "begin_review", INTAKE, None, NOW + timedelta(hours=1))
    assert case.state == "documentation_review"
    assert case.state_entered_at == NOW + timedelta(hours=1)
    assert case.events[-1].type == "case.transitioned"
    assert case.events[-1].payload["from"] == "intake_received"


def test_transition_from_the_wrong_state_is_refused_and_lists_allowed_ones() -> None:
    case = _case()
    with pytest.raises(TransitionNotAllowed, match="allowed: \\['begin_review', 'cancel'\\]"):
        case.transition(WORKFLOW, "triage_accept", ADMIN, None, NOW)
    assert case.state == "intake_received"
    assert case.events == []


def test_role_not_listed_on_the_transition_is_refused() -> None:
    case = _case("clinical_triage")
    with pytest.raises(TransitionNotAllowed, match="needs one of the roles"):
        case.transition(WORKFLOW, "triage_accept", INTAKE, None, NOW)
    case.transition(WORKFLOW, "triage_accept", TRIAGE, None, NOW)
    assert case.state == "specialist_assignment"


def test_missing_document_and_failing_guard_block_documentation_complete() -> None:
    case = _case("documentation_review", diagnoses=[])
    with pytest.raises(GuardFailed) as caught:
        case.transition(WORKFLOW, "documentation_complete", INTAKE, None, NOW)
    assert [p.field for p in caught.value.problems] == ["documents"]
    case.document_types = ["referral_letter"]
    with pytest.raises(GuardFailed, match=r"size\(case.diagnoses\) > 0"):
        case.transition(WORKFLOW, "documentation_complete", INTAKE, None, NOW)
    case.data["diagnoses"] = ["I10"]
    case.transition(WORKFLOW, "documentation_complete", INTAKE, None, NOW)
    assert case.state == "eligibility_verification"


def test_reason_is_required_where_the_definition_says_so() -> None:
    case = _case()
    with pytest.raises(GuardFailed) as caught:
        case.transition(WORKFLOW, "cancel", INTAKE, "  ", NOW)
    assert caught.value.problems[0].field == "reason"
    case.transition(WORKFLOW, "cancel", INTAKE, "duplicate of referral 12", NOW)
    assert case.state == "cancelled"


def test_out_of_network_referral_cannot_skip_authorization() -> None:
    case = _case("eligibility_verification", network_status="out_of_network")
    with pytest.raises(GuardFailed, match="in_network"):
        case.transition(WORKFLOW, "eligible_no_authorization", ADMIN, None, NOW)
    case.transition(WORKFLOW, "eligible_authorization_required", ADMIN, None, NOW)
    assert case.state == "authorization_pending"


def test_required_fields_are_named_when_missing() -> None:
    case = _case("specialist_assignment")
    with pytest.raises(GuardFailed) as caught:
        case.transition(WORKFLOW, "schedule_appointment", ADMIN, None, NOW)
    assert {p.field for p in caught.value.problems} == {"specialist", "appointment_at"}


def test_terminal_states_have_no_way_out() -> None:
    for name, state in WORKFLOW.states.items():
        if state.terminal:
            assert WORKFLOW.transitions_from(name) == [], name
