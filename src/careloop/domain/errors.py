"""Domain errors carry a stable code and structured fields; HTTP status is added at the edge."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldProblem:
    """One bad input field: a JSON-pointer-like location and what is wrong with it."""

    field: str
    problem: str


class CareloopError(Exception):
    """Base of every error careloop raises on purpose."""

    code = "careloop_error"
    # Refusals worth an audit entry of their own (written by the API edge, outside the
    # refused transaction, which rolls back).
    audited = False

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(CareloopError):
    """Input failed validation; lists every bad field, not only the first."""

    code = "invalid_input"

    def __init__(self, problems: list[FieldProblem], detail: str | None = None) -> None:
        self.problems = problems
        summary = "; ".join(f"{p.field}: {p.problem}" for p in problems)
        super().__init__(detail or f"invalid input ({summary})")


class NotFound(CareloopError):
    code = "not_found"


class OutOfReach(NotFound):
    """A case outside the actor's record rules. Answered exactly like a missing case, so
    nobody learns which case ids exist, but audited as a refusal."""

    audited = True

    def __init__(self, case_id: int) -> None:
        super().__init__(f"case {case_id} does not exist")


class PermissionDenied(CareloopError):
    code = "permission_denied"
    audited = True


class NotAuthenticated(CareloopError):
    code = "not_authenticated"
    audited = True


class AccountLocked(NotAuthenticated):
    """Too many failed sign-ins: refused until the lock ends, even with the right password."""

    code = "account_locked"


class SessionTimedOut(NotAuthenticated):
    code = "session_timed_out"


class SecondFactorRequired(NotAuthenticated):
    """The password was right but the account needs a TOTP code."""

    code = "totp_required"


class SecondFactorInvalid(NotAuthenticated):
    """A wrong TOTP code, or one already used."""

    code = "totp_invalid"


class IdentityProviderUnavailable(CareloopError):
    """The single sign-on provider could not be reached or answered nonsense; retry later."""

    code = "identity_provider_unavailable"


class StaleVersion(CareloopError):
    """Optimistic concurrency: the caller's version is not the current one."""

    code = "stale_version"

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"case is at version {actual}, request was based on version {expected}")
        self.expected = expected
        self.actual = actual


class TransitionNotAllowed(CareloopError):
    code = "transition_not_allowed"


class GuardFailed(CareloopError):
    """A transition's guard condition or a required field/document is not satisfied."""

    code = "transition_guard_failed"

    def __init__(self, detail: str, problems: list[FieldProblem] | None = None) -> None:
        super().__init__(detail)
        self.problems = problems or []


class IdempotencyConflict(CareloopError):
    code = "idempotency_key_reused"


class PayloadTooLarge(CareloopError):
    code = "payload_too_large"


class UnsupportedMediaType(CareloopError):
    code = "unsupported_media_type"


class FourEyesRequired(PermissionDenied):
    """A definition change approved by its own author (or by no named person)."""

    code = "four_eyes_required"
    # The governance use case records it itself, with the change it concerns.
    audited = False


class ChangeClosed(CareloopError):
    """A decision on a change request that is no longer proposed."""

    code = "change_closed"
    audited = True


class ChangeOutdated(CareloopError):
    """The active version moved since the change was proposed: its diff is stale."""

    code = "change_outdated"


class ApprovalRequired(CareloopError):
    """An approval policy guards this transition or action and no granted approval is
    on record. ``request_ids`` names the open requests; the refused transaction writes
    nothing, so a request still missing is opened in a transaction of its own."""

    code = "approval_required"
    audited = True

    def __init__(
        self,
        detail: str,
        case_id: int,
        target: str,
        policies: tuple[str, ...],
        request_ids: tuple[int, ...] = (),
        reason: str = "",
    ) -> None:
        super().__init__(detail)
        self.case_id = case_id
        self.target = target
        self.policies = policies
        self.request_ids = request_ids
        self.reason = reason


class ApprovalClosed(CareloopError):
    """A decision on an approval request that is no longer open."""

    code = "approval_closed"
    audited = True


class ApprovalConflict(CareloopError):
    """A decision that contradicts the record: a second vote by the same person, or a
    resubmission of a request that is not waiting for information."""

    code = "approval_conflict"
    audited = True


@dataclass(frozen=True)
class DefinitionProblem:
    """A definition error that names the file, the line and the problem."""

    source: str
    line: int | None
    problem: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.problem}"


class DefinitionInvalid(CareloopError):
    """A definition failed validation; it never loads."""

    code = "definition_invalid"

    def __init__(self, problems: list[DefinitionProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
