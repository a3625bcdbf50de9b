"""OpenID Connect sign-in (authorization code flow with PKCE) against one provider.

authlib builds the protocol messages (authorization URL, PKCE challenge, token request);
joserfc checks the ID token: its RS256/ES256 signature against the provider's JWKS, and
iss, aud (and azp), exp, iat and the nonce. authlib's own httpx integration wants the
``httpx2`` package, so requests go through careloop's httpx instead.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from authlib.common.security import generate_token  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749.parameters import (  # type: ignore[import-untyped]
    prepare_grant_uri,
    prepare_token_request,
)
from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact

from careloop.domain.errors import IdentityProviderUnavailable, NotAuthenticated
from careloop.services.single_sign_on import Identity, PendingSignIn

_ALGORITHMS = ["RS256", "PS256", "ES256"]
_LEEWAY_SECONDS = 60


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    client_id: str
    client_secret: str | None
    redirect_uri: str
    scopes: tuple[str, ...]
    link_claim: str


class OidcProvider:
    """One configured provider; discovery and keys are fetched once and cached."""

    def __init__(
        self,
        settings: OidcSettings,
        now: Callable[[], datetime],
        timeout: float = 10.0,
    ) -> None:
        self._settings = settings
        self._now = now
        self._timeout = timeout
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None

    @property
    def link_claim(self) -> str:
        return self._settings.link_claim

    def authorization_url(self) -> tuple[str, PendingSignIn]:
        pending = PendingSignIn(
            state=str(generate_token(32)),
            nonce=str(generate_token(32)),
            code_verifier=str(generate_token(64)),
        )
        url = prepare_grant_uri(
            self._metadata_value("authorization_endpoint"),
            client_id=self._settings.client_id,
            response_type="code",
            redirect_uri=self._settings.redirect_uri,
            scope=list(self._settings.scopes),
            state=pending.state,
            nonce=pending.nonce,
            code_challenge=create_s256_code_challenge(pending.code_verifier),
            code_challenge_method="S256",
        )
        return str(url), pending

    def identity(self, params: Mapping[str, str], pending: PendingSignIn) -> Identity:
        """Check the callback, redeem the code, validate the ID token: who signed in."""
        if "error" in params:
            raise NotAuthenticated(
                f"the identity provider refused the sign-in: {params['error'][:100]}"
            )
        if not hmac.compare_digest(params.get("state", ""), pending.state):
            raise NotAuthenticated(
                "the sign-in state does not match; start again at /api/v1/auth/oidc/login"
            )
        if not params.get("code"):
            raise NotAuthenticated("the identity provider sent no authorization code")
        tokens = self._redeem(params["code"], pending)
        claims = self._validated_claims(str(tokens.get("id_token", "")), pending)
        return Identity(claims["iss"], claims["sub"], claims)

    def _redeem(self, code: str, pending: PendingSignIn) -> dict[str, Any]:
        body = prepare_token_request(
            "authorization_code",
            code=code,
            redirect_uri=self._settings.redirect_uri,
            code_verifier=pending.code_verifier,
            client_id=None if self._settings.client_secret else self._settings.client_id,
        )
        auth = (
            (self._settings.client_id, self._settings.client_secret)
            if self._settings.client_secret
            else None
        )
        response = self._call(
            "POST",
            self._metadata_value("token_endpoint"),
            content=str(body),
            auth=auth,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        if response.status_code >= 400:
            error = _json(response).get("error", f"HTTP {response.status_code}")
            raise NotAuthenticated(f"the identity provider refused the code: {str(error)[:100]}")
        return _json(response)

    def _validated_claims(self, id_token: str, pending: PendingSignIn) -> dict[str, Any]:
        if not id_token:
            raise NotAuthenticated("the identity provider sent no ID token")
        try:
            token = jwt.decode(id_token, self._key_set(id_token), algorithms=_ALGORITHMS)
            claims: dict[str, Any] = dict(token.claims)
            jwt.JWTClaimsRegistry(
                now=lambda: int(self._now().timestamp()),
                leeway=_LEEWAY_SECONDS,
                iss={"essential": True, "value": self._settings.issuer},
                sub={"essential": True},
                aud={"essential": True, "value": self._settings.client_id},
                exp={"essential": True},
                iat={"essential": True},
                nonce={"essential": True, "value": pending.nonce},
            ).validate(claims)
        except JoseError as error:
            reason = f"{error.error} {error.description or ''}".strip()
            raise NotAuthenticated(f"the ID token is not valid: {reason}") from None
        except ValueError as error:
            raise NotAuthenticated(f"the ID token is not valid: {error}") from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self._settings.client_id:
            raise NotAuthenticated("the ID token is not valid: azp is not this client")
        return claims

    def _key_set(self, id_token: str) -> KeySet:
        """The provider's keys; fetched again once when a token names an unknown key,
        which is how providers roll their keys over."""
        try:
            kid = extract_compact(id_token.encode()).headers().get("kid")
        except (JoseError, ValueError):
            raise NotAuthenticated("the ID token is not a compact JWS") from None
        keys = self._keys
        if keys is None or (kid is not None and kid not in {k.kid for k in keys}):
            response = self._call("GET", self._metadata_value("jwks_uri"))
            try:
                keys = KeySet.import_key_set(_json(response))  # type: ignore[arg-type]
            except (JoseError, KeyError, TypeError) as error:
                raise IdentityProviderUnavailable(
                    f"the identity provider's JWKS is unusable: {error}"
                ) from None
            self._keys = keys
        return keys

    def _metadata_value(self, name: str) -> str:
        with self._lock:
            if self._metadata is None:
                url = self._settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
                metadata = _json(self._call("GET", url))
                if metadata.get("issuer") != self._settings.issuer:
                    raise IdentityProviderUnavailable(
                        f"the discovery document names issuer {metadata.get('issuer')!r}, "
                        f"not {self._settings.issuer!r}"
                    )
                self._metadata = metadata
        value = self._metadata.get(name)
        if not isinstance(value, str):
            raise IdentityProviderUnavailable(f"the discovery document has no {name}")
        return value

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            with httpx.Client(timeout=self._timeout) as client:
                response = client.request(method, url, **kwargs)
        except httpx.HTTPError as error:
            raise IdentityProviderUnavailable(
                f"the identity provider is unreachable ({type(error).__name__}); try again"
            ) from None
        if response.status_code >= 500:
            raise IdentityProviderUnavailable(
                f"the identity provider answered HTTP {response.status_code}; try again"
            )
        return response


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise IdentityProviderUnavailable("the identity provider answered with no JSON object")
    return value
