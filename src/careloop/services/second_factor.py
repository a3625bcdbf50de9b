"""TOTP second factor: enrol (secret shown once), confirm with a code, check at sign-in.

The stored TOTP state is ``SECRET`` until the first code is accepted and
``SECRET:STEP`` after, STEP being the time step of the last accepted code. A code is
accepted only for a later step, and the state is replaced by compare-and-set, so one
code cannot sign in twice, not even by two requests at the same instant.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from careloop.domain.access import Action, Actor
from careloop.domain.errors import (
    FieldProblem,
    InvalidInput,
    NotFound,
    PermissionDenied,
    SecondFactorInvalid,
)
from careloop.services.credentials import TotpCodes
from careloop.services.deps import Deps
from careloop.services.ports import UnitOfWork
from careloop.services.recording import audit

# Token kinds a person signs in with; API tokens may not change how their owner signs in.
_SIGNED_IN = frozenset({"session", "enrolment"})


def enrol_totp(deps: Deps, totp: TotpCodes, actor: Actor) -> str:
    """Start TOTP enrolment for the signed-in user: an otpauth:// URI holding a new
    secret, shown this once. It takes effect when confirmed with a code."""
    _require_signed_in_person(actor)
    now = deps.clock.now()
    with deps.uow() as uow:
        user = _user(uow, actor)
        if user["totp_enabled_at"] is not None:
            raise InvalidInput(
                [FieldProblem("totp", "TOTP is already on; an administrator can reset it")]
            )
        secret = totp.new_secret()
        uow.accounts.update_user(user["id"], {"totp_secret": secret, "totp_enabled_at": None})
        audit(
            uow,
            actor,
            "user.totp.enrol",
            now,
            category="security",
            detail={"user": user["username"]},
        )
        uow.commit()
    return totp.provisioning_uri(secret, actor.username)


def confirm_totp(deps: Deps, totp: TotpCodes, actor: Actor, code: str) -> datetime:
    """Turn TOTP on with a code from the app; from then on every password sign-in of
    this user needs a code. The confirming code cannot be used to sign in."""
    _require_signed_in_person(actor)
    now = deps.clock.now()
    with deps.uow() as uow:
        user = _user(uow, actor)
        if user["totp_secret"] is None or user["totp_enabled_at"] is not None:
            raise InvalidInput([FieldProblem("code", "start TOTP enrolment first")])
        secret, _ = stored_totp(user["totp_secret"])
        step = totp.matching_step(secret, code, now)
        if step is None:
            raise SecondFactorInvalid(
                "the TOTP code is wrong; enter the current code (is the phone's clock right?)"
            )
        uow.accounts.update_user(
            user["id"], {"totp_secret": f"{secret}:{step}", "totp_enabled_at": now}
        )
        audit(
            uow,
            actor,
            "user.totp.confirm",
            now,
            category="security",
            detail={"user": user["username"]},
        )
        uow.commit()
    return now


def reset_totp(deps: Deps, actor: Actor, username: str) -> None:
    """Turn a user's TOTP off (a lost phone); the user enrols again."""
    actor.require(Action.USER_MANAGE)
    now = deps.clock.now()
    with deps.uow() as uow:
        user = uow.accounts.find_user(username)
        if user is None:
            raise NotFound(f"no user {username!r}")
        uow.accounts.update_user(user["id"], {"totp_secret": None, "totp_enabled_at": None})
        audit(
            uow,
            actor,
            "user.totp.reset",
            now,
            category="security",
            detail={
                "user": username,
                "before": {"totp": user["totp_enabled_at"] is not None},
                "after": {"totp": False},
            },
        )
        uow.commit()


def check_totp_code(totp: TotpCodes, user: dict[str, Any], code: str, at: datetime) -> str:
    """Check a sign-in code against the user's TOTP state; the new state to store with
    ``claim_totp``. Raises SecondFactorInvalid for a wrong or already used code."""
    secret, last_step = stored_totp(user["totp_secret"])
    step = totp.matching_step(secret, code, at)
    if step is None:
        raise SecondFactorInvalid("the TOTP code is wrong")
    if last_step is not None and step <= last_step:
        raise SecondFactorInvalid("this TOTP code was used already; wait for the next one")
    return f"{secret}:{step}"


def claim_totp(uow: UnitOfWork, user: dict[str, Any], new_state: str) -> None:
    """Record the accepted code's step in the caller's transaction, unless a concurrent
    sign-in got there first with the same state."""
    if not uow.accounts.claim_totp_secret(user["id"], user["totp_secret"], new_state):
        raise SecondFactorInvalid("this TOTP code was used already; wait for the next one")


def stored_totp(state: str) -> tuple[str, int | None]:
    secret, _, step = state.partition(":")
    return secret, int(step) if step else None


def _require_signed_in_person(actor: Actor) -> None:
    if actor.extra.get("token_kind") not in _SIGNED_IN:
        raise PermissionDenied("TOTP is set up from a signed-in session, not with an API token")


def _user(uow: UnitOfWork, actor: Actor) -> dict[str, Any]:
    user = uow.accounts.find_user(actor.username)
    if user is None or user["id"] != actor.user_id:
        raise NotFound(f"no user {actor.username!r}")
    return user
