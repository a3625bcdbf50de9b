"""Every request is authenticated; the actor is handed to the use case. Sign-in routes
are rate limited per source address."""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from careloop.api.blocking import BlockingPool
from careloop.api.problems import problem
from careloop.domain.access import Actor
from careloop.domain.errors import NotAuthenticated
from careloop.services.authentication import TokenAuthenticator

# Where passwords and codes are tried: the routes worth guessing at.
SIGN_IN_PATHS = frozenset(
    {"/api/v1/auth/login", "/api/v1/auth/oidc/callback"}
)


async def current_actor(request: Request) -> Actor:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise NotAuthenticated("send an API token as 'Authorization: Bearer <token>'")
    authenticator: TokenAuthenticator = request.app.state.authenticator
    client = request.client.host if request.client else ""
    token = token.strip()
    # A cached token is resolved on the event loop; only a lookup in the database is
    # worth a hop to the thread pool.
    actor = authenticator.cached(token, client)
    if actor is None:
        blocking: BlockingPool = request.app.state.blocking
        actor = await blocking.run(authenticator.authenticate, token, client)
    # The problem handler names the actor in the audit entry of a refused request.
    request.state.actor = actor
    return actor


CurrentActor = Annotated[Actor, Depends(current_actor)]


class SlidingWindowLimiter:
    """At most ``limit`` attempts per source address in any ``window_seconds``.

    In-process: each API process counts its own attempts, so N processes behind a load
    balancer allow up to N times the limit. The per-account lockout, kept in the
    database, is the limit that holds across processes.
    """

    def __init__(
        self,
        limit: int,
        window_seconds: float,
        now: Callable[[], datetime],
        max_addresses: int = 100_000,
    ) -> None:
        self._limit = limit
        self._window = window_seconds
        self._now = now
        self._max_addresses = max_addresses
        self._attempts: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int | None:
        """Record an attempt; None if allowed, else the seconds until one is."""
        now = self._now().timestamp()
        with self._lock:
            attempts = self._attempts.get(address)
            if attempts is None:
                if len(self._attempts) >= self._max_addresses:
                    self._forget_idle(now)
                attempts = self._attempts.setdefault(address, deque())
            while attempts and attempts[0] <= now - self._window:
                attempts.popleft()
            if len(attempts) >= self._limit:
                return max(1, math.ceil(attempts[0] + self._window - now))
            attempts.append(now)
            return None

    def _forget_idle(self, now: float) -> None:
        idle = [
            a for a, times in self._attempts.items() if not times or times[-1] <= now - self._window
        ]
        for address in idle:
            del self._attempts[address]
        if len(self._attempts) >= self._max_addresses:
            # A flood of distinct addresses: start afresh rather than grow without bound.
            self._attempts.clear()


class SignInRateLimitMiddleware:
    """Answers 429 with Retry-After when an address tries to sign in too often.

    Pure ASGI: every other path costs one set lookup.
    """

    def __init__(self, app: ASGIApp, limiter: SlidingWindowLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in SIGN_IN_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        wait = self.limiter.retry_after(client[0] if client else "")
        if wait is None:
            await self.app(scope, receive, send)
            return
        response = problem(
            429,
            "rate_limited",
            f"too many sign-in attempts from this address; retry in {wait} seconds",
            scope["path"],
        )
        response.headers["Retry-After"] = str(wait)
        await response(scope, receive, send)
