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


class PermissionDenied(CareloopError):
    code = "permission_denied"


class NotAuthenticated(CareloopError):
    code = "not_authenticated"


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
