"""Break-glass access: request a time-limited grant to one case; list grants for review."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from careloop.api.security import CurrentActor
from careloop.services import break_glass
from careloop.services.deps import Deps

router = APIRouter(prefix="/api/v1", tags=["access"])


class BreakGlassIn(BaseModel):
    reason: Annotated[str, Field(min_length=1, max_length=2000)]
    minutes: Annotated[int, Field(ge=1, le=break_glass.MAX_MINUTES)] = 30


def _deps(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


@router.post(
    "/referrals/{case_id}/break-glass",
    status_code=201,
    summary="Emergency access to a referral outside your record rules (audited, alerted)",
)
def request_break_glass(
    request: Request, actor: CurrentActor, case_id: int, body: BreakGlassIn
) -> Any:
    return break_glass.break_glass(_deps(request), actor, case_id, body.reason, body.minutes)


@router.get("/access/break-glass", summary="Break-glass grants, newest first (for review)")
def list_break_glass(
    request: Request, actor: CurrentActor, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> Any:
    return {"items": break_glass.list_grants(_deps(request), actor, limit)}
