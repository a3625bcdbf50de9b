"""Workflow definitions, who am I, and health. (Sign-in lives in routes/auth.py.)"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from careloop.api.security import CurrentActor
from careloop.domain.access import Action

router = APIRouter(prefix="/api/v1", tags=["system"])


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
