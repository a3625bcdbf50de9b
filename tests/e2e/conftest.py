"""A real careloop HTTP server on loopback, backed by a fresh SQLite file."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
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
from tests.conftest import START, make_app


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


@contextmanager
def running_server(app: App, roles: Iterable[Role] = tuple(Role)) -> Iterator[Server]:
    """Serve ``app`` on loopback with one token-holding user per role; stop it after."""
    tokens = {}
    for role in roles:
        username = f"user.{role.value}"
        accounts.add_user(app.deps, SYSTEM_ACTOR, app.hashing, username, role.value,
                          [role.value], None, locations=["*"])
        tokens[role.value] = accounts.create_token(app.deps, SYSTEM_ACTOR, username, "test",
                                                   timedelta(days=1))
    uv, thread, base_url = start_server(app)
    try:
        yield Server(base_url, app, tokens)
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        app.engine.dispose()


@pytest.fixture
def server(sqlite_url: str, clock: ManualClock) -> Iterator[Server]:
    """A fresh server per test: for tests that move the clock or need an empty database."""
    with running_server(make_app(sqlite_url, clock)) as running:
        yield running


@pytest.fixture(scope="module")
def shared_clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture(scope="module")
def shared_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                  shared_clock: ManualClock) -> Iterator[Server]:
    """One server per test module; its tests compare counts before and after."""
    folder = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    with running_server(make_app(f"sqlite:///{folder / 'careloop.db'}", shared_clock)) as running:
        yield running


Clients = Callable[[str], httpx.Client]


@pytest.fixture
def api(shared_server: Server) -> Iterator[Clients]:
    """One open client per role on the module's server, closed after the test."""
    opened: dict[str, httpx.Client] = {}

    def client(role: str) -> httpx.Client:
        if role not in opened:
            opened[role] = shared_server.client(role)
        return opened[role]

    yield client
    for each in opened.values():
        each.close()


def case_count(api: Clients) -> int:
    """How many referrals exist, over every page of the list."""
    count, cursor = 0, None
    while True:
        params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        response = api("administrator").get("/api/v1/referrals", params=params)
        assert response.status_code == 200, response.text
        count += len(response.json()["items"])
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return count
