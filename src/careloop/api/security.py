"""Every request is authenticated; the actor is handed to the use case."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from careloop.api.blocking import BlockingPool
from careloop.domain.access import Actor
from careloop.domain.errors import NotAuthenticated
from careloop.services.accounts import TokenAuthenticator


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
    return actor


CurrentActor = Annotated[Actor, Depends(current_actor)]
