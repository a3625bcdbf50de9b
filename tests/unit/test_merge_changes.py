"""merge_changes validates only the fields a change touches: it must store and refuse
exactly what validating the whole referral again would."""

from typing import Any

import pytest

from careloop.domain.errors import InvalidInput
from careloop.services.referral_input import (
    ReferralIn,
    merge_changes,
    validate_changes,
    validate_referral,
)

CURRENT = validate_referral(
    {
        "patient": {
            "family_name": "Rivera",
            "given_name": "Ana",
            "birth_date": "1980-02-03",
            "mrn": "MRN-1",
            "sex": "female",
        },
        "referring_provider": {"name": "Dr. Lee", "npi": "1234567893"},
        "specialty": "cardiology",
        "reason": "chest pain",
        "clinic": "north",
        "diagnoses": ["I20.9"],
        "payer": {"name": "Medicare", "plan": "B"},
        "specialist": "dr.kim",
    }
).model_dump(mode="json", exclude_none=True)

CHANGES: list[dict[str, Any]] = [
    {"urgency": "urgent"},
    {"priority": "high", "queue": "documentation-review", "team": "intake"},
    {"queue": "Not A Queue"},
    {"patient": {"birth_date": "2999-01-01"}},
    {"patient": {"phone": "+1 555 0100", "email": "ana@example.org"}},
    {"patient": {"email": "not-an-email"}},
    {"payer": {"group_number": "G-100"}},
    {"payer": {"plan": None}},
    {"payer": {"member_id": "bad id!"}},
    {"referring_provider": {"npi": "1234567890"}},
    {"reason": None},
    {"reason": "  spaced out  "},
    {"reason": "nul \x00 inside"},
    {"specialist": None},
    {"diagnoses": ["e11.9", "I10"]},
    {"diagnoses": ["XYZ"]},
    {"flags": ["needs_interpreter"]},
    {"appointment_at": "2026-05-04T09:30:00+02:00"},
    {"authorization_number": "AUTH-77", "network_status": "out_of_network"},
]


def _whole(current: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """The reference: merge, then validate the whole referral again."""
    merged = dict(current)
    changes = validate_changes(data)
    for name, value in changes.model_dump(mode="json", exclude_unset=True).items():
        if isinstance(value, dict) and isinstance(merged.get(name), dict):
            merged[name] = {**merged[name], **value}
        else:
            merged[name] = value
    return validate_referral(merged).model_dump(mode="json", exclude_none=True)


def _outcome(merge: Any, data: dict[str, Any]) -> Any:
    try:
        return merge(data)
    except InvalidInput as error:
        return sorted((p.field, p.problem) for p in error.problems)


@pytest.mark.parametrize("data", CHANGES, ids=lambda d: ",".join(d))
def test_a_merged_change_is_what_validating_the_whole_referral_gives(
    data: dict[str, Any],
) -> None:
    expected = _outcome(lambda d: _whole(CURRENT, d), data)
    got = _outcome(lambda d: merge_changes(CURRENT, validate_changes(d)), data)
    assert got == expected


def test_some_changes_are_refused_with_the_field_named() -> None:
    with pytest.raises(InvalidInput) as refused:
        merge_changes(CURRENT, validate_changes({"patient": {"birth_date": "2999-01-01"}}))
    assert [p.field for p in refused.value.problems] == ["patient.birth_date"]


def test_referral_checks_stay_per_field() -> None:
    # merge_changes relies on it: a check spanning fields would need the whole referral.
    assert not ReferralIn.__pydantic_decorators__.model_validators


@pytest.mark.parametrize("data", CHANGES, ids=lambda d: ",".join(d))
def test_a_change_made_again_merges_as_the_first_time(data: dict[str, Any]) -> None:
    # Plain values are validated once per (field, value) and remembered: the second
    # time (and a refusal every time) must be what the whole referral would give.
    expected = _outcome(lambda d: _whole(CURRENT, d), data)
    for _ in range(3):
        assert _outcome(lambda d: merge_changes(CURRENT, validate_changes(d)), data) == expected
