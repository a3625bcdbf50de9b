"""The shape of referral data coming in, validated field by field.

Pydantic reports every bad field at once; the checks for NPI and ICD-10-CM come from
the domain so the API, the CLI and the demo generator all apply the same rules.
"""

from __future__ import annotations

import functools
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
)

from careloop.domain.errors import FieldProblem, InvalidInput
from careloop.domain.referral import (
    CHANNELS,
    NETWORK_STATUSES,
    PRIORITIES,
    SEXES,
    SPECIALTIES,
    URGENCIES,
)
from careloop.domain.validators import is_valid_icd10_cm, is_valid_npi

Specialty = Literal[SPECIALTIES]  # type: ignore[valid-type]
Urgency = Literal[URGENCIES]  # type: ignore[valid-type]
NetworkStatus = Literal[NETWORK_STATUSES]  # type: ignore[valid-type]
Channel = Literal[CHANNELS]  # type: ignore[valid-type]
Sex = Literal[SEXES]  # type: ignore[valid-type]


def _check_npi(value: str) -> str:
    if not is_valid_npi(value):
        raise ValueError("not a valid NPI: 10 digits with a Luhn check digit")
    return value


def _check_icd10(value: str) -> str:
    if not is_valid_icd10_cm(value):
        raise ValueError(f"{value!r} is not an ICD-10-CM code (for example E11.9)")
    return value.upper()


def _check_birth_date(value: date) -> date:
    if value > date.today():
        raise ValueError("birth date is in the future")
    if value.year < 1900:
        raise ValueError("birth date is before 1900")
    return value


Text100 = Annotated[str, Field(min_length=1, max_length=100)]
Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-_.]+$")]
Npi = Annotated[str, AfterValidator(_check_npi)]
Icd10 = Annotated[str, Field(max_length=10), AfterValidator(_check_icd10)]
BirthDate = Annotated[date, AfterValidator(_check_birth_date)]
QueueName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
Priority = Literal[PRIORITIES]  # type: ignore[valid-type]
Flag = Annotated[str, Field(min_length=1, max_length=50, pattern=r"^[a-z][a-z0-9_]*$")]


def reject_nul(value: Any) -> Any:
    """No NUL characters in text: PostgreSQL cannot store them (a text or JSONB value
    holding one fails at the database), and no human-entered field needs one."""
    # Runs on every field of every body: plain checks, no generator.
    if type(value) is str:
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
    elif type(value) is list:
        for text in value:
            if type(text) is str and "\x00" in text:
                raise ValueError("must not contain NUL characters")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    _no_nul = field_validator("*")(reject_nul)


class PatientIn(_Strict):
    family_name: Text100
    given_name: Text100
    birth_date: BirthDate
    sex: Sex = "unknown"
    mrn: Identifier | None = None
    member_id: Identifier | None = None
    phone: Annotated[str, Field(max_length=30, pattern=r"^\+?[0-9 ()\-.]{7,30}$")] | None = None
    email: Annotated[str, Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")] | None = (
        None
    )
    postal_code: Annotated[str, Field(max_length=10, pattern=r"^[0-9]{5}(-[0-9]{4})?$")] | None = (
        None
    )


class ProviderIn(_Strict):
    name: Text100
    npi: Npi
    organization: Annotated[str, Field(max_length=200)] | None = None


class PayerIn(_Strict):
    name: Text100
    plan: Annotated[str, Field(max_length=100)] | None = None
    member_id: Identifier | None = None
    group_number: Identifier | None = None


class ReferralIn(_Strict):
    patient: PatientIn
    referring_provider: ProviderIn
    specialty: Specialty
    specialist: Annotated[str, Field(max_length=150)] | None = None
    urgency: Urgency = "routine"
    reason: Annotated[str, Field(min_length=1, max_length=4000)]
    diagnoses: Annotated[list[Icd10], Field(max_length=25)] = []
    payer: PayerIn | None = None
    network_status: NetworkStatus = "unknown"
    authorization_number: Identifier | None = None
    clinic: Text100
    channel: Channel = "api"
    appointment_at: AwareDatetime | None = None
    queue: QueueName | None = None
    team: QueueName | None = None
    priority: Priority | None = None
    flags: Annotated[list[Flag], Field(max_length=20)] | None = None


class ReferralChanges(_Strict):
    """Fields a coordinator may change on an open referral (merged into the stored data)."""

    patient: dict[str, Any] | None = None
    referring_provider: dict[str, Any] | None = None
    specialist: Annotated[str, Field(max_length=150)] | None = None
    urgency: Urgency | None = None
    reason: Annotated[str, Field(min_length=1, max_length=4000)] | None = None
    diagnoses: Annotated[list[Icd10], Field(max_length=25)] | None = None
    payer: dict[str, Any] | None = None
    network_status: NetworkStatus | None = None
    authorization_number: Identifier | None = None
    appointment_at: AwareDatetime | None = None
    queue: QueueName | None = None
    team: QueueName | None = None
    priority: Priority | None = None
    flags: Annotated[list[Flag], Field(max_length=20)] | None = None


def problems_from(error: ValidationError, prefix: str = "") -> list[FieldProblem]:
    problems = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(
            FieldProblem(f"{prefix}{location}" if location else prefix or "body", message)
        )
    return problems


def validate_referral(data: dict[str, Any]) -> ReferralIn:
    try:
        return ReferralIn.model_validate(data)
    except ValidationError as error:
        raise InvalidInput(problems_from(error)) from error


def validate_changes(data: dict[str, Any]) -> ReferralChanges:
    try:
        return ReferralChanges.model_validate(data)
    except ValidationError as error:
        raise InvalidInput(problems_from(error)) from error


def merge_changes(current: dict[str, Any], changes: ReferralChanges) -> dict[str, Any]:
    """``current`` (stored referral data, valid when written) with ``changes`` applied,
    nested objects merged, as stored: JSON values, no nulls. Only the fields the changes
    touch are validated, against ReferralIn's own definitions: its checks are per field
    (none spans fields), so the untouched ones would pass again."""
    merged = dict(current)
    touched: dict[str, Any] = {}
    for name, value in changes.model_dump(mode="json", exclude_unset=True).items():
        if isinstance(value, dict) and isinstance(merged.get(name), dict):
            value = {**merged[name], **value}
        touched[name] = value
    if len(touched) == 1 and type(next(iter(touched.values()))) in PLAIN_TYPES:
        ((name, value),) = touched.items()
        valid = _validate_scalar(name, value)
    else:
        valid = _validate_part(touched)
    for name in touched:
        if name in valid:
            merged[name] = valid[name]
        else:
            merged.pop(name, None)
    return merged


# Plain values: what a validated change may be remembered by (see _validate_scalar).
PLAIN_TYPES = frozenset({str, int, bool, type(None)})


def _validate_part(touched: dict[str, Any]) -> dict[str, Any]:
    try:
        model = _referral_part(frozenset(touched)).model_validate(touched)
    except ValidationError as error:
        raise InvalidInput(problems_from(error)) from error
    return model.model_dump(mode="json", exclude_none=True)


@functools.lru_cache(maxsize=1024, typed=True)
def _validate_scalar(name: str, value: str | int | bool | None) -> dict[str, Any]:
    """One top-level field set to a plain value, validated once per (field, value): a
    rule sets the same queue on every case it meets. What a plain field's checks give
    depends on its value alone (the one check that reads the clock, the birth date, is
    inside the patient object, never a plain value). Callers only read the result."""
    return _validate_part({name: value})


@functools.lru_cache(maxsize=256)
def _referral_part(names: frozenset[str]) -> type[BaseModel]:
    """A model of ReferralIn's fields ``names`` alone, with the same definitions."""
    # Per-field validation is only the whole of it while no check spans fields.
    assert not ReferralIn.__pydantic_decorators__.model_validators, "validate the whole"
    fields: dict[str, Any] = {
        name: (ReferralIn.model_fields[name].annotation, ReferralIn.model_fields[name])
        for name in names
    }
    return create_model("ReferralIn", __base__=_Strict, **fields)
