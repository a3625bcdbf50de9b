"""Sign-in (password + TOTP, or OpenID Connect), sign-out, TOTP set-up and API tokens."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from careloop.api.security import CurrentActor
from careloop.domain.errors import NotAuthenticated, NotFound
from careloop.services import second_factor, sessions, single_sign_on, tokens
from careloop.services.authentication import TokenAuthenticator
from careloop.services.credentials import Authentication
from careloop.services.deps import Deps
from careloop.services.single_sign_on import IdentityProvider, PendingSignIn

router = APIRouter(prefix="/api/v1/auth", tags=["authentication"])
OIDC_COOKIE = "careloop_oidc"
_OIDC_PATH = "/api/v1/auth/oidc"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class LoginBody(_Body):
    username: Annotated[str, Field(min_length=1, max_length=150)]
    password: Annotated[str, Field(min_length=1, max_length=1000)]
    totp_code: Annotated[str, Field(max_length=10)] | None = None


class TotpCodeBody(_Body):
    code: Annotated[str, Field(min_length=1, max_length=10)]


class TokenBody(_Body):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    scopes: list[Annotated[str, Field(max_length=50)]] | None = None
    expires_in_days: Annotated[int, Field(ge=1, le=3650)] | None = None
    # Another user's token needs user management.
    username: Annotated[str, Field(min_length=1, max_length=150)] | None = None


def _deps(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


def _auth(request: Request) -> Authentication:
    auth: Authentication = request.app.state.authentication
    return auth


def _cache(request: Request) -> TokenAuthenticator:
    authenticator: TokenAuthenticator = request.app.state.authenticator
    return authenticator


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


@router.post("/login", summary="Sign in with a password (and a TOTP code) for a session")
def login(request: Request, body: LoginBody) -> Any:
    attempt = sessions.LoginAttempt(body.username, body.password, body.totp_code, _client(request))
    signed_in = sessions.login(_deps(request), _auth(request), attempt, _cache(request))
    return _session(signed_in)


@router.post("/logout", status_code=204, summary="End the session the request came with")
def logout(request: Request, actor: CurrentActor) -> Response:
    sessions.logout(_deps(request), actor, _cache(request))
    return Response(status_code=204)


@router.post("/totp/enrol", status_code=201, summary="Start TOTP set-up: the secret, once")
def enrol_totp(request: Request, actor: CurrentActor) -> Any:
    uri = second_factor.enrol_totp(_deps(request), _auth(request).totp, actor)
    return {"otpauth_uri": uri}


@router.post("/totp/confirm", summary="Turn TOTP on with a code from the app")
def confirm_totp(request: Request, actor: CurrentActor, body: TotpCodeBody) -> Any:
    enabled_at = second_factor.confirm_totp(_deps(request), _auth(request).totp, actor, body.code)
    return {"totp": True, "enabled_at": enabled_at}


@router.get("/oidc/login", summary="Sign in with the organisation's identity provider")
def oidc_login(request: Request) -> Any:
    url, pending = single_sign_on.start_sign_in(_provider(request))
    response = RedirectResponse(url, status_code=302)
    response.set_cookie(
        OIDC_COOKIE,
        _encode(pending),
        max_age=600,
        path=_OIDC_PATH,
        httponly=True,
        secure=request.url.scheme == "https",
        samesite="lax",
    )
    return response


@router.get("/oidc/callback", summary="Where the identity provider sends the browser back")
def oidc_callback(request: Request) -> Any:
    pending = _decode(request.cookies.get(OIDC_COOKIE, ""))
    signed_in = single_sign_on.finish_sign_in(
        _deps(request),
        _auth(request).policy,
        _provider(request),
        dict(request.query_params),
        pending,
        _client(request),
    )
    response = JSONResponse(jsonable_encoder(_session(signed_in)))
    response.delete_cookie(OIDC_COOKIE, path=_OIDC_PATH)
    return response


@router.post("/tokens", status_code=201, summary="Create an API token (its secret shown once)")
def create_token(request: Request, actor: CurrentActor, body: TokenBody) -> Any:
    ttl = timedelta(days=body.expires_in_days) if body.expires_in_days else None
    issued = tokens.create_api_token(
        _deps(request),
        actor,
        body.username or actor.username,
        body.name,
        ttl,
        scopes=body.scopes,
        policy=_auth(request).policy,
    )
    return _token(issued, body.name)


@router.get("/tokens", summary="My tokens and sessions, without their secrets")
def list_tokens(request: Request, actor: CurrentActor) -> Any:
    return {"items": tokens.list_tokens(_deps(request), actor)}


@router.post("/tokens/{token_id}/rotate", status_code=201, summary="A new secret for a token")
def rotate_token(request: Request, actor: CurrentActor, token_id: int) -> Any:
    issued, old_valid_until = tokens.rotate_token(
        _deps(request), actor, token_id, policy=_auth(request).policy, cache=_cache(request)
    )
    return {**_token(issued, None), "replaces": token_id, "old_token_valid_until": old_valid_until}


@router.delete("/tokens/{token_id}", status_code=204, summary="Revoke a token at once")
def revoke_token(request: Request, actor: CurrentActor, token_id: int) -> Response:
    tokens.revoke_token(_deps(request), actor, token_id, cache=_cache(request))
    return Response(status_code=204)


def _provider(request: Request) -> IdentityProvider:
    provider: IdentityProvider | None = request.app.state.identity_provider
    if provider is None:
        raise NotFound("single sign-on is not configured (CARELOOP_OIDC_ISSUER)")
    return provider


def _session(signed_in: sessions.SignIn) -> dict[str, Any]:
    token = signed_in.token
    return {
        "access_token": token.token,
        "token_type": "bearer",
        "kind": token.kind,
        "username": signed_in.username,
        "expires_at": token.expires_at,
        "idle_timeout_seconds": token.idle_timeout_seconds,
        "totp_enrolment_required": signed_in.totp_enrolment_required,
    }


def _token(issued: tokens.IssuedToken, name: str | None) -> dict[str, Any]:
    return {
        "id": issued.id,
        "token": issued.token,
        "name": name,
        "kind": issued.kind,
        "scopes": issued.scopes,
        "expires_at": issued.expires_at,
    }


def _encode(pending: PendingSignIn) -> str:
    text = json.dumps([pending.state, pending.nonce, pending.code_verifier])
    return base64.urlsafe_b64encode(text.encode()).decode()


def _decode(cookie: str) -> PendingSignIn:
    """The browser's half of the sign-in. It needs no signature: it only proves this
    browser started the sign-in, and the PKCE verifier in it is useless to anyone else."""
    try:
        state, nonce, verifier = json.loads(base64.urlsafe_b64decode(cookie.encode()))
        return PendingSignIn(str(state), str(nonce), str(verifier))
    except (ValueError, TypeError):
        raise NotAuthenticated(
            "the sign-in cookie is missing or damaged; start again at /api/v1/auth/oidc/login"
        ) from None
