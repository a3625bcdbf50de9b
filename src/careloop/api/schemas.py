"""Request bodies the API accepts besides the referral itself (services/referral_input)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from careloop.services.referral_input import ReferralChanges, reject_nul


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    _no_nul = field_validator("*")(reject_nul)


class TransitionIn(_Body):
    transition: Annotated[str, Field(min_length=1, max_length=100)]
    version: Annotated[int, Field(ge=1)]
    reason: Annotated[str, Field(max_length=4000)] | None = None
    changes: ReferralChanges | None = None


class MoveIn(_Body):
    id: Annotated[int, Field(ge=1)]
    transition: Annotated[str, Field(min_length=1, max_length=100)]
    version: Annotated[int, Field(ge=1)]
    reason: Annotated[str, Field(max_length=4000)] | None = None


class BulkTransitionIn(_Body):
    # A work queue's page at most: one transaction stays short.
    items: Annotated[list[MoveIn], Field(min_length=1, max_length=200)]


class UpdateIn(_Body):
    version: Annotated[int, Field(ge=1)]
    changes: ReferralChanges


class AssignIn(_Body):
    version: Annotated[int, Field(ge=1)]
    assignee: Annotated[str, Field(min_length=1, max_length=150)] | None


class NoteIn(_Body):
    body: Annotated[str, Field(min_length=1, max_length=20_000)]


class TaskIn(_Body):
    title: Annotated[str, Field(min_length=1, max_length=300)]
    assignee: Annotated[str, Field(max_length=150)] | None = None
    due_at: AwareDatetime | None = None


class DefinitionIn(_Body):
    text: Annotated[str, Field(min_length=1, max_length=1_000_000)]
    source: Annotated[str, Field(min_length=1, max_length=300)] = "api"
    activate: bool = False


class SubscriptionIn(_Body):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    url: Annotated[str, Field(min_length=1, max_length=2000)]
    event_types: Annotated[list[str], Field(min_length=1, max_length=50)]
    filter: Annotated[str, Field(max_length=2000)] | None = None


class ReplayIn(_Body):
    kind: Annotated[str, Field(pattern="^(events|deliveries)$")]
    ids: Annotated[list[int], Field(max_length=1000)] | None = None


class InboundSourceIn(_Body):
    case_field: Annotated[str, Field(min_length=1, max_length=100)]
    event_field: Annotated[str, Field(min_length=1, max_length=100)]
    events: Annotated[list[str], Field(min_length=1, max_length=50)]


class SpecialistIn(_Body):
    display_name: Annotated[str, Field(max_length=200)] | None = None
    specialty: str
    clinics: Annotated[list[str], Field(max_length=50)]
    max_workload: Annotated[int, Field(ge=0, le=100_000)]
    open_slots: Annotated[int, Field(ge=0, le=100_000)]
    available: bool = True
