"""RFC 9457 problem+json for every error, with a stable code and the bad fields."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from careloop.api.blocking import BlockingPool
from careloop.domain import errors
from careloop.domain.access import Actor
from careloop.services.approvals import hold_transition
from careloop.services.recording import record_refusal

STATUS: dict[type[errors.CareloopError], int] = {
    errors.InvalidInput: 422,
    errors.NotFound: 404,
    errors.PermissionDenied: 403,
    errors.NotAuthenticated: 401,
    errors.StaleVersion: 409,
    errors.TransitionNotAllowed: 409,
    errors.GuardFailed: 422,
    errors.IdempotencyConflict: 409,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.DefinitionInvalid: 422,
    errors.IdentityProviderUnavailable: 502,
    errors.ChangeClosed: 409,
    errors.ChangeOutdated: 409,
    errors.ApprovalRequired: 409,
    errors.ApprovalClosed: 409,
    errors.ApprovalConflict: 409,
}
TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal error",
    502: "Bad gateway",
}


def problem(status: int, code: str, detail: str, instance: str = "", **extra: Any) -> JSONResponse:
    return _problem_response(problem_body(status, code, detail, instance, **extra))


def _problem_response(body: dict[str, Any]) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if body["status"] == 401 else None
    return JSONResponse(
        body, status_code=body["status"], media_type="application/problem+json", headers=headers
    )


def problem_body(
    status: int, code: str, detail: str, instance: str = "", **extra: Any
) -> dict[str, Any]:
    return {
        "type": f"https://careloop.dev/problems/{code}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "code": code,
        "detail": detail,
        "instance": instance,
        **extra,
    }


def error_problem(error: errors.CareloopError, instance: str) -> dict[str, Any]:
    """The problem object of a domain error, as one item of a batch answer."""
    status = next((s for cls, s in STATUS.items() if isinstance(error, cls)), 400)
    extra: dict[str, Any] = {}
    if isinstance(error, errors.InvalidInput | errors.GuardFailed) and error.problems:
        extra["errors"] = _fields(error.problems)
    if isinstance(error, errors.StaleVersion):
        extra["current_version"] = error.actual
    if isinstance(error, errors.DefinitionInvalid):
        extra["errors"] = [
            {"source": p.source, "line": p.line, "problem": p.problem} for p in error.problems
        ]
    return problem_body(status, error.code, error.detail, instance, **extra)


def internal_problem(instance: str) -> dict[str, Any]:
    """An unexpected failure, as one item of a batch answer: nothing about its cause
    leaves the server (it is logged there)."""
    return problem_body(500, "internal_error", "an unexpected error; it has been logged", instance)


def _fields(problems: list[errors.FieldProblem]) -> list[dict[str, str]]:
    return [{"field": p.field, "problem": p.problem} for p in problems]


async def _careloop_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, errors.CareloopError)
    if error.audited:
        await _audit_refusal(request, error)
    body = error_problem(error, request.url.path)
    if isinstance(error, errors.ApprovalRequired):
        body.update(await _hold_for_approval(request, error))
    return _problem_response(body)


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    fields = []
    malformed = next((e for e in error.errors() if e.get("type") == "json_invalid"), None)
    if malformed is not None:
        position = malformed.get("loc", ("body", "?"))[-1]
        reason = malformed.get("ctx", {}).get("error", "invalid JSON")
        return problem(
            400,
            "malformed_json",
            f"the body is not valid JSON: {reason} at character {position}",
            request.url.path,
            errors=[{"field": "body", "problem": reason}],
        )
    for item in error.errors():
        location = [str(p) for p in item.get("loc", ())]
        if location and location[0] in ("body", "query", "path", "header"):
            location = location[1:] if location[0] == "body" else location
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        fields.append({"field": ".".join(location) or "body", "problem": message})
    detail = "; ".join(f"{f['field']}: {f['problem']}" for f in fields)
    return problem(
        422, "invalid_input", f"invalid input ({detail})", request.url.path, errors=fields
    )


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        error.status_code, "http_error"
    )
    return problem(error.status_code, code, str(error.detail), request.url.path)


async def _audit_refusal(request: Request, error: errors.CareloopError) -> None:
    """Every refused request is on record: who (or which address, when no valid token
    came), what was asked, and why it was refused."""
    client = request.client.host if request.client else ""
    actor: Actor = getattr(request.state, "actor", None) or Actor(
        user_id=0, username="anonymous", roles=frozenset(), source_address=client
    )
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    case_id = request.path_params.get("case_id")
    blocking: BlockingPool = request.app.state.blocking
    await blocking.run(
        record_refusal,
        request.app.state.deps,
        actor,
        f"refused {request.method} {path}"[:100],
        error.code,
        error.detail,
        int(case_id) if isinstance(case_id, int | str) and str(case_id).isdigit() else None,
    )


async def _hold_for_approval(request: Request, error: errors.ApprovalRequired) -> dict[str, Any]:
    """The refused transition wrote nothing; the approval requests it needs are opened
    now in a transaction of their own (see services/approval_gate.py)."""
    ids = list(error.request_ids)
    actor = getattr(request.state, "actor", None)
    if actor is not None and len(ids) < len(error.policies):
        blocking: BlockingPool = request.app.state.blocking
        # If opening fails the 409 still stands; the approval can be requested explicitly.
        with suppress(errors.CareloopError):
            ids = await blocking.run(
                hold_transition,
                request.app.state.deps,
                actor,
                error.case_id,
                error.target,
                error.reason,
            )
    return {"policies": list(error.policies), "approvals": ids}


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.CareloopError, _careloop_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
