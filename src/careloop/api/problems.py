"""RFC 9457 problem+json for every error, with a stable code and the bad fields."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from careloop.domain import errors

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
    500: "Internal error",
}


def problem(status: int, code: str, detail: str, instance: str = "", **extra: Any) -> JSONResponse:
    body = {
        "type": f"https://careloop.dev/problems/{code}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "code": code,
        "detail": detail,
        "instance": instance,
        **extra,
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )


def _fields(problems: list[errors.FieldProblem]) -> list[dict[str, str]]:
    return [{"field": p.field, "problem": p.problem} for p in problems]


async def _careloop_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, errors.CareloopError)
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
    return problem(status, error.code, error.detail, request.url.path, **extra)


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


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.CareloopError, _careloop_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
