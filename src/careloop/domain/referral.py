"""The referral case type: the fields a definition may reference and its document types."""

from __future__ import annotations

from careloop.domain.access import ROLE_NAMES
from careloop.domain.workflow_builder import CaseTypeSchema

CASE_TYPE = "referral"

SPECIALTIES = (
    "cardiology",
    "dermatology",
    "endocrinology",
    "gastroenterology",
    "neurology",
    "oncology",
    "orthopedics",
    "pulmonology",
    "rheumatology",
    "urology",
    "ophthalmology",
    "psychiatry",
)
URGENCIES = ("routine", "urgent", "emergent")
NETWORK_STATUSES = ("in_network", "out_of_network", "unknown")
CHANNELS = ("fax", "email", "portal", "fhir", "hl7", "payer", "phone", "web", "api")
SEXES = ("female", "male", "other", "unknown")
DOCUMENT_TYPES = frozenset(
    {
        "referral_letter",
        "clinical_notes",
        "lab_results",
        "imaging",
        "insurance_card",
        "authorization",
        "consent",
        "other",
    }
)

# Paths a guard or a required-fields list may reference, with their CEL types.
FIELDS: dict[str, str] = {
    "patient.family_name": "string",
    "patient.given_name": "string",
    "patient.birth_date": "string",
    "patient.sex": "string",
    "patient.mrn": "string",
    "patient.member_id": "string",
    "patient.phone": "string",
    "patient.email": "string",
    "patient.postal_code": "string",
    "referring_provider.name": "string",
    "referring_provider.npi": "string",
    "referring_provider.organization": "string",
    "specialty": "string",
    "specialist": "string",
    "urgency": "string",
    "reason": "string",
    "diagnoses": "list",
    "payer.name": "string",
    "payer.plan": "string",
    "payer.member_id": "string",
    "payer.group_number": "string",
    "network_status": "string",
    "authorization_number": "string",
    "clinic": "string",
    "channel": "string",
    "appointment_at": "string",
    # Set by routing and automation (or a coordinator): the work queue, team, priority
    # and review flags such as possible_duplicate.
    "queue": "string",
    "team": "string",
    "priority": "string",
    "flags": "list",
    # Derived at evaluation time, not stored in the referral payload.
    "state": "string",
    "assignee": "string",
    "document_types": "list",
    "open_tasks": "int",
    "age_hours": "double",
}

PRIORITIES = ("normal", "high", "critical")
# Fields an automation rule's set_field action may write.
SETTABLE_FIELDS = frozenset(
    {
        "urgency",
        "specialist",
        "network_status",
        "authorization_number",
        "queue",
        "team",
        "priority",
        "flags",
        "payer.plan",
        "payer.group_number",
    }
)
# Fields holding a date-time, to which timer rules may be anchored.
DATE_FIELDS = frozenset({"appointment_at"})

SCHEMA = CaseTypeSchema(
    name=CASE_TYPE, fields=FIELDS, document_types=DOCUMENT_TYPES, roles=ROLE_NAMES
)


def lookup(data: dict[str, object], path: str) -> object:
    """Value at a dotted path, or None when any part is missing."""
    node: object = data
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def is_present(value: object) -> bool:
    return value not in (None, "", [], {})
