"""An ASGI middleware that tells the in-process worker when requests are being served
(careloop.engine.pacing). Pure ASGI: it adds two lock operations to a request."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from careloop.engine.pacing import Foreground


class ForegroundMiddleware:
    def __init__(self, app: ASGIApp, foreground: Foreground) -> None:
        self.app = app
        self.foreground = foreground

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.foreground.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.foreground.leave()
