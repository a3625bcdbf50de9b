"""User administration: create, change roles and where a user works, deactivate, reset
TOTP. Every change is audited with the values before and after."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from careloop.api.security import CurrentActor
from careloop.services import accounts, second_factor
from careloop.services.authentication import TokenAuthenticator
from careloop.services.deps import Deps

router = APIRouter(prefix="/api/v1/users", tags=["users"])

_Name = Annotated[str, Field(min_length=1, max_length=150)]
_Label = Annotated[str, Field(min_length=1, max_length=100)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class UserBody(_Body):
    username: _Name
    display_name: Annotated[str, Field(max_length=200)] = ""
    roles: list[Annotated[str, Field(max_length=50)]]
    password: Annotated[str, Field(max_length=1000)] | None = None
    organisation: Annotated[str, Field(max_length=100)] = ""
    locations: list[_Label] = []
    teams: list[_Label] = []
    manager: _Name | None = None


class AccessBody(_Body):
    roles: list[Annotated[str, Field(max_length=50)]] | None = None
    organisation: Annotated[str, Field(max_length=100)] | None = None
    locations: list[_Label] | None = None
    teams: list[_Label] | None = None
    manager: _Name | None = None


def _deps(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


def _cache(request: Request) -> TokenAuthenticator:
    authenticator: TokenAuthenticator = request.app.state.authenticator
    return authenticator


@router.post("", status_code=201, summary="Create a user")
def create_user(request: Request, actor: CurrentActor, body: UserBody) -> Any:
    user_id = accounts.add_user(
        _deps(request),
        actor,
        request.app.state.authentication.hashing,
        body.username,
        body.display_name,
        body.roles,
        body.password,
        organisation=body.organisation,
        locations=body.locations,
        teams=body.teams,
        manager=body.manager,
    )
    return {"id": user_id, "username": body.username}


@router.get("", summary="Every user, without secrets")
def list_users(request: Request, actor: CurrentActor) -> Any:
    return {"items": accounts.list_users(_deps(request), actor)}


@router.patch("/{username}/access", summary="Change roles, organisation, locations, teams")
def change_access(request: Request, actor: CurrentActor, username: str, body: AccessBody) -> Any:
    change = accounts.AccessChange(
        roles=body.roles,
        organisation=body.organisation,
        locations=body.locations,
        teams=body.teams,
        manager=body.manager,
        clear_manager="manager" in body.model_fields_set and body.manager is None,
    )
    return accounts.change_access(_deps(request), actor, username, change, _cache(request))


@router.post("/{username}/deactivate", status_code=204, summary="Deactivate; revoke tokens")
def deactivate_user(request: Request, actor: CurrentActor, username: str) -> Response:
    accounts.deactivate_user(_deps(request), actor, username, _cache(request))
    return Response(status_code=204)


@router.post("/{username}/totp/reset", status_code=204, summary="Turn a user's TOTP off")
def reset_totp(request: Request, actor: CurrentActor, username: str) -> Response:
    second_factor.reset_totp(_deps(request), actor, username)
    return Response(status_code=204)
