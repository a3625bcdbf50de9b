"""Automation endpoints: definitions, webhooks, dead letters, capacity, a case's log."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from careloop.api.schemas import (
    DefinitionIn,
    InboundSourceIn,
    ReplayIn,
    SpecialistIn,
    SubscriptionIn,
)
from careloop.api.security import CurrentActor
from careloop.domain.access import Action
from careloop.domain.errors import NotFound
from careloop.services import automation_admin as admin
from careloop.services.automation_registry import AutomationRegistry
from careloop.services.deps import Deps
from careloop.services.inbound import receive_webhook

router = APIRouter(prefix="/api/v1", tags=["automation"])


def _deps(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


def _registry(request: Request) -> AutomationRegistry:
    registry: AutomationRegistry = request.app.state.automation
    return registry


def _tools(request: Request) -> admin.WebhookTools:
    tools: admin.WebhookTools = request.app.state.webhook_tools
    return tools


# -- definitions: rule sets, routing tables, calendars -----------------------------------
@router.get("/automation/definitions", summary="Stored automation definitions")
def list_definitions(
    request: Request, actor: CurrentActor, kind: Annotated[str | None, Query()] = None
) -> Any:
    actor.require(Action.AUTOMATION_READ)
    return {"items": _registry(request).stored(kind)}


@router.get("/automation/definitions/{kind}/{key}/{version}", summary="One version, with its text")
def show_definition(
    request: Request, actor: CurrentActor, kind: str, key: str, version: int
) -> Any:
    actor.require(Action.AUTOMATION_READ)
    return _registry(request).source_of(kind, key, version)


@router.post("/automation/definitions/validate", summary="Validate without storing")
def validate_definition(request: Request, actor: CurrentActor, body: DefinitionIn) -> Any:
    actor.require(Action.AUTOMATION_READ)
    kind, key, version = _registry(request).validate(body.text, body.source)
    return {"valid": True, "kind": kind, "key": key, "version": version}


@router.post("/automation/definitions", status_code=201, summary="Store a version")
def store_definition(request: Request, actor: CurrentActor, body: DefinitionIn) -> Any:
    return admin.store_definition(
        _deps(request), _registry(request), actor, body.text, body.source, body.activate
    )


@router.post(
    "/automation/definitions/{kind}/{key}/{version}/activate",
    status_code=202,
    summary="Propose activating a stored version (a second administrator approves it)",
)
def activate_definition(
    request: Request, actor: CurrentActor, kind: str, key: str, version: int
) -> Any:
    return admin.activate_definition(_deps(request), actor, kind, key, version)


# -- outbound webhooks -----------------------------------------------------------------------
@router.get("/webhooks/subscriptions", summary="Webhook subscriptions")
def list_subscriptions(request: Request, actor: CurrentActor) -> Any:
    return {"items": admin.list_subscriptions(_deps(request), actor)}


@router.post("/webhooks/subscriptions", status_code=201, summary="Subscribe an endpoint")
def create_subscription(request: Request, actor: CurrentActor, body: SubscriptionIn) -> Any:
    row, secret = admin.create_subscription(
        _deps(request), _tools(request), actor, body.model_dump()
    )
    return {**row, "secret": secret}


@router.post("/webhooks/subscriptions/{subscription_id}/rotate-secret", summary="Add a new secret")
def rotate_secret(request: Request, actor: CurrentActor, subscription_id: int) -> Any:
    return {"secret": admin.rotate_secret(_deps(request), _tools(request), actor, subscription_id)}


@router.post(
    "/webhooks/subscriptions/{subscription_id}/finish-rotation", summary="Retire the old secret"
)
def finish_rotation(request: Request, actor: CurrentActor, subscription_id: int) -> Any:
    admin.finish_rotation(_deps(request), actor, subscription_id)
    return {"rotated": True}


@router.post("/webhooks/subscriptions/{subscription_id}/{state}", summary="Enable or disable")
def set_active(request: Request, actor: CurrentActor, subscription_id: int, state: str) -> Any:
    if state not in ("enable", "disable"):
        raise NotFound(f"no action {state!r}; use enable or disable")
    admin.set_subscription_active(_deps(request), actor, subscription_id, state == "enable")
    return {"active": state == "enable"}


@router.get("/webhooks/deliveries", summary="Delivery log with attempts")
def list_deliveries(
    request: Request,
    actor: CurrentActor,
    subscription_id: Annotated[int | None, Query()] = None,
    status: Annotated[str | None, Query(pattern="^(pending|delivered|dead|disabled)$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Any:
    rows = admin.list_deliveries(_deps(request), actor, subscription_id, status, limit)
    return {"items": rows}


@router.put("/webhooks/sources/{key}", summary="Create or re-key an inbound source")
def put_source(request: Request, actor: CurrentActor, key: str, body: InboundSourceIn) -> Any:
    secret = admin.put_inbound_source(
        _deps(request), _tools(request), actor, key, body.model_dump()
    )
    return {"key": key, "secret": secret}


@router.post("/webhooks/inbound/{source}", summary="Receive a signed webhook (no bearer token)")
async def inbound(request: Request, source: str) -> Any:
    body = await request.body()
    state = request.app.state
    client = request.client.host if request.client else ""
    return receive_webhook(
        state.deps,
        state.webhook_verify,
        source,
        dict(request.headers),
        body,
        timedelta(seconds=state.inbound_tolerance_seconds),
        client,
    )


# -- dead letters ----------------------------------------------------------------------------
@router.get("/dead-letters", summary="Events and deliveries whose retries are exhausted")
def list_dead_letters(
    request: Request, actor: CurrentActor, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> Any:
    return admin.list_dead_letters(_deps(request), actor, limit)


@router.post("/dead-letters/replay", summary="Put dead letters back in line")
def replay(request: Request, actor: CurrentActor, body: ReplayIn) -> Any:
    return {"replayed": admin.replay_dead_letters(_deps(request), actor, body.kind, body.ids)}


# -- capacity and a case's automation -----------------------------------------------------------
@router.put("/specialists/{name}", summary="Set a specialist's capacity (scheduling feed)")
def put_specialist(request: Request, actor: CurrentActor, name: str, body: SpecialistIn) -> Any:
    admin.put_specialist(_deps(request), actor, name, body.model_dump())
    return {"name": name, **body.model_dump()}


@router.get("/referrals/{case_id}/automation", summary="Rule runs, timers, links, messages")
def case_automation(request: Request, actor: CurrentActor, case_id: int) -> Any:
    return admin.case_automation(_deps(request), actor, case_id)
