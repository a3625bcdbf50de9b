"""Shape domain objects for the API (the third shape: domain, table, schema)."""

from __future__ import annotations

from typing import Any

from careloop.domain.access import Actor
from careloop.domain.calendar import BusinessCalendar, add_business_time
from careloop.domain.case import Case
from careloop.domain.masking import mask_data, view_of
from careloop.domain.workflow import Workflow


def present_case(
    case: Case, workflow: Workflow, actor: Actor, calendar: BusinessCalendar
) -> dict[str, Any]:
    """The case as ``actor`` may see it: field rules hide or mask what its roles may not.
    ``calendar`` is its clinic's: the SLA target counts business time on it, as the SLA
    timers do, so the due time shown is when the breach step fires."""
    data, masked = mask_data(view_of(actor), case.data)
    state = workflow.states[case.state]
    sla = workflow.sla_seconds(case.state, case.urgency)
    return {
        "id": case.id,
        "case_type": case.case_type,
        "state": case.state,
        "state_label": state.label,
        "state_kind": state.kind,
        "fhir": {
            "task_status": state.fhir.task_status,
            "business_status": state.fhir.business_status,
            "service_request_status": state.fhir.service_request_status,
        },
        "version": case.version,
        "workflow": {"key": case.workflow_key, "version": case.workflow_version},
        "assignee": case.assignee,
        "created_at": case.created_at,
        "updated_at": case.updated_at,
        "state_entered_at": case.state_entered_at,
        "sla_due_at": add_business_time(calendar, case.state_entered_at, sla) if sla else None,
        "allowed_transitions": [t.name for t in workflow.transitions_from(case.state)],
        "referral": data,
        "masked_fields": masked,
    }
