"""Sign-in, workflow definitions and health."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from careloop.api.schemas import LoginIn
from careloop.api.security import CurrentActor
from careloop.domain.access import Action
from careloop.services import accounts

router = APIRouter(prefix="/api/v1", tags=["system"])


@router.post("/auth/token", summary="Exchange a username and password for an API token")
def login(request: Request, body: LoginIn) -> Any:
    app = request.app.state
    client = request.client.host if request.client else ""
    token = accounts.login(app.deps, app.hashing, body.username, body.password, client)
    return {"access_token": token, "token_type": "bearer", "expires_in": 12 * 3600}


@router.get("/workflows", summary="Stored workflow definitions")
def list_workflows(request: Request, actor: CurrentActor) -> Any:
    actor.require(Action.WORKFLOW_READ)
    return {"items": request.app.state.deps.workflows.list()}


@router.get("/me", summary="Who am I")
def me(actor: CurrentActor) -> Any:
    return {"id": actor.user_id, "username": actor.username, "roles": sorted(actor.roles)}


@router.get("/health", summary="Liveness")
def health() -> Any:
    return {"status": "ok"}
