"""The write buffer's copy of a case (copy_case) is what dataclasses.replace() would make,
with its own data, document types and events, so neither holder's edits reach the other."""

from dataclasses import fields, replace
from datetime import UTC, datetime

from careloop.adapters.db.write_buffer import copy_case
from careloop.domain.case import Case
from careloop.domain.events import Event

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def test_a_copied_case_equals_the_original_and_shares_nothing_it_could_edit() -> None:
    # copy_case copies the instance's fields instead of running __init__: only sound
    # while Case has no __post_init__ to run.
    assert not hasattr(Case, "__post_init__")
    case = Case(
        7,
        "referral",
        "referral-standard",
        1,
        "intake",
        3,
        {"patient": {"family_name": "Okafor"}, "diagnoses": ["I10"]},
        NOW,
        NOW,
        NOW,
        assignee="nina",
        document_types=["referral_letter"],
        open_tasks=2,
    )
    case.events.append(Event("case.updated", {"fields": ["x"]}))
    copied = copy_case(case)
    assert copied == replace(case, events=[])
    assert [f.name for f in fields(copied)] == [f.name for f in fields(case)]
    copied.data["patient"]["family_name"] = "Nguyen"
    copied.data["diagnoses"].append("R07.9")
    copied.document_types.append("insurance_card")
    copied.state = "triage"
    assert case.data == {"patient": {"family_name": "Okafor"}, "diagnoses": ["I10"]}
    assert case.document_types == ["referral_letter"] and case.state == "intake"
    assert len(case.events) == 1 and copied.events == []
