"""A real careloop HTTP server on loopback, backed by a fresh SQLite file."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
import uvicorn

from careloop.api.app import create_app
from careloop.bootstrap import App
from careloop.domain.access import SYSTEM_ACTOR, Role
from careloop.services import accounts
from careloop.services.ports import ManualClock
from tests.conftest import make_app


@dataclass
class Server:
    base_url: str
    app: App
    tokens: dict[str, str]  # role name -> bearer token of a user with only that role

    def client(self, role: str = "administrator") -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=10,
                            headers={"Authorization": f"Bearer {self.tokens[role]}"})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(app: App) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = _free_port()
    config = uvicorn.Config(create_app(app), host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture
def server(sqlite_url: str, clock: ManualClock) -> Iterator[Server]:
    app = make_app(sqlite_url, clock)
    tokens = {}
    for role in Role:
        accounts.add_user(app.deps, SYSTEM_ACTOR, app.hashing, f"user.{role.value}",
                          role.value, [role.value], None)
        tokens[role.value] = accounts.create_token(app.deps, SYSTEM_ACTOR, f"user.{role.value}",
                                                   "test", timedelta(days=1))
    uv, thread, base_url = start_server(app)
    yield Server(base_url, app, tokens)
    uv.should_exit = True
    thread.join(timeout=10)
    app.engine.dispose()
