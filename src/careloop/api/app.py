"""The FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from careloop import __version__
from careloop.adapters.cel_conditions import compile_condition
from careloop.adapters.db.engine import is_sqlite
from careloop.adapters.webhooks import check_target, new_secret, verify
from careloop.api import problems
from careloop.api.blocking import BlockingPool
from careloop.api.foreground import ForegroundMiddleware
from careloop.api.intake_batcher import IntakeBatcher
from careloop.api.limits import BodyLimitMiddleware
from careloop.api.routes import access, approvals, automation, referrals, system
from careloop.api.routes import audit as audit_routes
from careloop.api.routes import auth as auth_routes
from careloop.api.routes import governance as governance_routes
from careloop.api.routes import users as users_routes
from careloop.api.security import SignInRateLimitMiddleware, SlidingWindowLimiter
from careloop.bootstrap import STEP_SOURCES, App
from careloop.services.accounts import TokenAuthenticator
from careloop.services.automation_admin import WebhookTools


def create_app(app: App) -> FastAPI:
    # One thread per database connection the pool may hand out at once.
    blocking = BlockingPool(threads=2 * app.settings.db_pool_size)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        blocking.shutdown()

    api = FastAPI(
        title="careloop",
        version=__version__,
        summary="Governed workflow layer for healthcare referral coordination",
        lifespan=lifespan,
    )
    api.state.blocking = blocking
    # SQLite has one writer: one batch at a time. PostgreSQL commits in parallel.
    writers = 1 if is_sqlite(app.engine) else max(1, app.settings.db_pool_size // 2)
    api.state.intake = IntakeBatcher(app.deps, blocking, writers=writers)
    api.state.deps = app.deps
    api.state.hashing = app.hashing
    api.state.authenticator = TokenAuthenticator(app.deps)
    api.state.authentication = app.authentication
    api.state.identity_provider = app.identity_provider
    api.state.automation = app.automation
    api.state.webhook_tools = WebhookTools(
        new_secret=new_secret,
        check_target=check_target,
        compile_condition=compile_condition,
        allow_private=app.settings.webhooks_allow_private,
    )
    api.state.webhook_verify = verify
    api.state.inbound_tolerance_seconds = app.settings.inbound_tolerance_seconds
    api.state.step_sources = STEP_SOURCES
    problems.install(api)
    api.include_router(referrals.router)
    api.include_router(system.router)
    api.include_router(automation.router)
    api.include_router(approvals.router)
    api.include_router(access.router)
    api.include_router(governance_routes.router)
    api.include_router(audit_routes.router)
    api.include_router(auth_routes.router)
    api.include_router(users_routes.router)
    api.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=app.settings.max_body_bytes,
        max_upload_bytes=app.settings.max_upload_bytes,
    )
    api.add_middleware(
        SignInRateLimitMiddleware,
        limiter=SlidingWindowLimiter(
            app.settings.login_rate_limit,
            app.settings.login_rate_window_seconds,
            app.deps.clock.now,
        ),
    )
    # Outermost: a request counts as in flight from its first byte to its last.
    api.add_middleware(ForegroundMiddleware, foreground=app.foreground)
    return api
