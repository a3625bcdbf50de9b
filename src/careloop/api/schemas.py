"""Request bodies the API accepts besides the referral itself (services/referral_input)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from careloop.services.referral_input import ReferralChanges


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class TransitionIn(_Body):
    transition: Annotated[str, Field(min_length=1, max_length=100)]
    version: Annotated[int, Field(ge=1)]
    reason: Annotated[str, Field(max_length=4000)] | None = None
    changes: ReferralChanges | None = None


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


class LoginIn(_Body):
    username: Annotated[str, Field(min_length=1, max_length=150)]
    password: Annotated[str, Field(min_length=1, max_length=1000)]
