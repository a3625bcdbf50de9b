"""Every request is authenticated; the actor is handed to the use case."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from careloop.domain.access import Actor
from careloop.domain.errors import NotAuthenticated
from careloop.services.accounts import TokenAuthenticator


def current_actor(request: Request) -> Actor:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise NotAuthenticated("send an API token as 'Authorization: Bearer <token>'")
    authenticator: TokenAuthenticator = request.app.state.authenticator
    client = request.client.host if request.client else ""
    return authenticator.authenticate(token.strip(), client)


CurrentActor = Annotated[Actor, Depends(current_actor)]
