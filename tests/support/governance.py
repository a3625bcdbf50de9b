"""Four-eyes in tests: one administrator proposes a definition version, a second approves."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

from careloop.bootstrap import App
from careloop.domain.access import SYSTEM_ACTOR, Actor, Role
from careloop.services import accounts, governance
from tests.conftest import ADMIN, actor

SECOND_ADMIN = actor(Role.ADMINISTRATOR, 9, "bea.admin")


def store_and_activate(
    app: App,
    text: str,
    source: str,
    proposer: Actor = ADMIN,
    approver: Actor = SECOND_ADMIN,
) -> dict[str, Any]:
    """Store a definition of any kind and make it active the governed way."""
    change = governance.submit_definition(
        app.deps, app.automation, proposer, text, source, "test set-up"
    )
    return governance.approve_change(app.deps, app.automation, approver, change["id"])


def store_rules(app: App, rules: str, key: str = "test-rules", depth: int = 5) -> None:
    """Store and activate a referral rule set of ``rules`` (YAML list items)."""
    text = (
        f"kind: rules\nkey: {key}\nversion: 1\ncase_type: referral\n"
        f"max_chain_depth: {depth}\nrules:\n{rules}"
    )
    store_and_activate(app, text, f"{key}.yaml")


def activate(
    app: App,
    kind: str,
    key: str,
    version: int,
    proposer: Actor = ADMIN,
    approver: Actor = SECOND_ADMIN,
) -> dict[str, Any]:
    """Activate a stored version: proposed by one administrator, approved by another."""
    change = governance.propose_change(app.deps, proposer, kind, key, version, "test set-up")
    return governance.approve_change(app.deps, app.automation, approver, change["id"])


def second_admin_client(
    app: App, base_url: str, username: str = "user.second-admin"
) -> httpx.Client:
    """An HTTP client of another administrator than the server's own 'administrator'."""
    with app.deps.read_uow() as uow:
        exists = uow.accounts.find_user(username) is not None
    if not exists:
        accounts.add_user(
            app.deps,
            SYSTEM_ACTOR,
            app.hashing,
            username,
            username,
            [Role.ADMINISTRATOR.value],
            None,
            locations=["*"],
        )
    token = accounts.create_token(app.deps, SYSTEM_ACTOR, username, "test", timedelta(days=1))
    return httpx.Client(base_url=base_url, timeout=10, headers={"Authorization": f"Bearer {token}"})
