"""Reading change governance, and the lookups its use cases share: which kinds are
governed, who may propose one, what is active and what a stored version says."""

from __future__ import annotations

from typing import Any

from careloop.domain.access import Action, Actor
from careloop.domain.errors import FieldProblem, InvalidInput, NotFound
from careloop.domain.governance import WORKFLOW_KIND, ChangeStatus, unified_diff, version_name
from careloop.services import automation_registry
from careloop.services.deps import Deps
from careloop.services.ports import UnitOfWork


def governed_kinds() -> tuple[str, ...]:
    # Read at call time: the automation registry gains kinds (approval policies).
    return (WORKFLOW_KIND, *automation_registry.KINDS)


def list_changes(
    deps: Deps,
    actor: Actor,
    status: str | None = None,
    kind: str | None = None,
    key: str | None = None,
    limit: int = 200,
) -> list[dict[str, Any]]:
    actor.require(Action.GOVERNANCE_READ)
    problems = []
    if status is not None and status not in set(ChangeStatus):
        problems.append(FieldProblem("status", f"must be one of {[s.value for s in ChangeStatus]}"))
    if kind is not None and kind not in governed_kinds():
        problems.append(FieldProblem("kind", f"must be one of {list(governed_kinds())}"))
    if problems:
        raise InvalidInput(problems)
    with deps.read_uow() as uow:
        return uow.governance.changes(status, kind, key, min(max(limit, 1), 500))


def get_change(deps: Deps, actor: Actor, change_id: int) -> dict[str, Any]:
    actor.require(Action.GOVERNANCE_READ)
    with deps.read_uow() as uow:
        return uow.governance.change(change_id)


def diff_versions(
    deps: Deps, actor: Actor, kind: str, key: str, from_version: int, to_version: int
) -> dict[str, Any]:
    """A unified diff between two stored versions of one definition key."""
    actor.require(Action.GOVERNANCE_READ)
    check_kind(kind)
    with deps.read_uow() as uow:
        old = source_text(uow, kind, key, from_version)
        new = source_text(uow, kind, key, to_version)
    return {
        "kind": kind,
        "key": key,
        "from_version": from_version,
        "to_version": to_version,
        "diff": unified_diff(
            old, new, version_name(kind, key, from_version), version_name(kind, key, to_version)
        ),
    }


def named_actor(deps: Deps, username: str, source_address: str = "cli") -> Actor:
    """The actor of an active user, for commands run on the server (the CLI): a change
    is proposed and approved by named people, not by the anonymous system."""
    with deps.read_uow() as uow:
        user = uow.accounts.find_user(username)
    if user is None or not user["active"]:
        raise NotFound(f"no active user {username!r}")
    return Actor(
        user_id=int(user["id"]),
        username=str(user["username"]),
        roles=frozenset(user["roles"]),
        source_address=source_address,
        organisation=str(user.get("organisation") or ""),
        locations=frozenset(user.get("locations") or ()),
        teams=frozenset(user.get("teams") or ()),
    )


def require_manage(actor: Actor, kind: str) -> None:
    actor.require(Action.WORKFLOW_MANAGE if kind == WORKFLOW_KIND else Action.AUTOMATION_MANAGE)


def active_version(uow: UnitOfWork, kind: str, key: str) -> int | None:
    if kind == WORKFLOW_KIND:
        row = uow.governance.active_workflow(key)
        return int(row["version"]) if row else None
    found = [r["version"] for r in uow.automation.active_definitions(kind) if r["key"] == key]
    return int(found[0]) if found else None


def source_text(uow: UnitOfWork, kind: str, key: str, version: int) -> str:
    if kind == WORKFLOW_KIND:
        row = uow.definitions.find(key, version)
    else:
        row = uow.automation.definition(kind, key, version)
    if row is None:
        raise NotFound(f"{kind} {key} version {version} is not stored")
    return str(row["source_text"])


def check_kind(kind: str) -> None:
    if kind not in governed_kinds():
        raise InvalidInput([FieldProblem("kind", f"must be one of {list(governed_kinds())}")])
