"""Real webhook receivers on 127.0.0.1 for tests: well-behaved, hostile and broken ones.

A ``Receiver`` is a small HTTP/1.1 server on a raw socket in background threads. It
records every request it reads and answers each path with a *behaviour*: a function that
gets the ``Exchange`` (the request and the raw connection) and returns whether to keep the
connection open for the next request. Raw sockets let behaviours misbehave in ways a
framework would not allow: garbage bytes, a reset, a hang, a trickle, an endless body.

    with Receiver({"/gone": gone(), "/slow": hang()}) as receiver:
        attempt = sender.send(receiver.url_for("/gone"), body, headers)
        assert receiver.requests[0].path == "/gone"

A request is recorded before its behaviour runs, so it is in ``requests`` by the time the
client sees any answer. Paths without a route get ``default`` (204 No Content unless
given). Pass ``tls`` (a server-side ``ssl.SSLContext``) to serve HTTPS; the SNI names
clients asked for are collected in ``server_names``. Unexpected errors in the server
threads are kept in ``errors`` (assert it is empty in fixtures). Request bodies must come
with Content-Length (as httpx sends them); chunked request bodies are not supported.
"""

from __future__ import annotations

import contextlib
import io
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as LibraryVerificationError

_REASONS = {
    200: "OK",
    204: "No Content",
    301: "Moved Permanently",
    302: "Found",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    410: "Gone",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the receiver read it; header names are lower-case."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int  # the n-th connection the receiver accepted, from 1: shows keep-alive

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass
class Exchange:
    """What a behaviour works with: the request, the raw socket, and the stop signal."""

    request: RecordedRequest
    connection: socket.socket
    stopping: threading.Event

    def send(self, data: bytes) -> None:
        self.connection.sendall(data)

    def wait(self, seconds: float | None) -> None:
        """Sleep, but wake at once when the receiver stops."""
        self.stopping.wait(seconds)


Behaviour = Callable[[Exchange], bool]
"""Handles one request; returns True to keep the connection open for another."""


def respond(
    status: int = 204, body: bytes = b"", headers: Mapping[str, str] | None = None
) -> Behaviour:
    """A well-formed HTTP/1.1 response (keep-alive unless the client asked to close)."""

    def behaviour(exchange: Exchange) -> bool:
        exchange.send(_response_bytes(status, body, headers or {}))
        return exchange.request.headers.get("connection", "").lower() != "close"

    return behaviour


def verify_signature(secrets: Sequence[str], accepted: int = 204) -> Behaviour:
    """Verify with the standardwebhooks library: ``accepted`` if any secret matches, else 401.

    The library checks the timestamp against the wall clock, so sign with the real time.
    """

    def behaviour(exchange: Exchange) -> bool:
        request = exchange.request
        for secret in secrets:
            try:
                Webhook(secret).verify(request.body, request.headers, json_parse=False)
            except LibraryVerificationError:
                continue
            return respond(accepted)(exchange)
        return respond(401, b"bad signature")(exchange)

    return behaviour


def gone() -> Behaviour:
    return respond(410, b"this endpoint is gone")


def throttle(retry_after: str, status: int = 429) -> Behaviour:
    return respond(status, b"slow down", {"Retry-After": retry_after})


def redirect(location: str, status: int = 302) -> Behaviour:
    return respond(status, b"", {"Location": location})


def garbage(data: bytes = b"\x00\xff\xfeNOT-HTTP garbage \x07\r\n\r\n") -> Behaviour:
    """Answer bytes that are not HTTP, then close."""

    def behaviour(exchange: Exchange) -> bool:
        exchange.send(data)
        return False

    return behaviour


def hang(seconds: float | None = None) -> Behaviour:
    """Read the request, never answer; close after ``seconds`` (or when the receiver stops)."""

    def behaviour(exchange: Exchange) -> bool:
        exchange.wait(seconds)
        return False

    return behaviour


def close_connection() -> Behaviour:
    """Close the connection without a byte of response (an orderly FIN)."""
    return lambda exchange: False


def reset_connection() -> Behaviour:
    """Abort the connection with a TCP reset (SO_LINGER 0) instead of a response."""

    def behaviour(exchange: Exchange) -> bool:
        exchange.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        exchange.connection.close()  # no shutdown first: that would send an orderly FIN
        return False

    return behaviour


def trickle(interval: float, data: bytes = b"HTTP/1.1 200 OK\r\nX-Slow: yes\r\n") -> Behaviour:
    """Send a response one byte per ``interval``: each read succeeds, the whole never ends."""

    def behaviour(exchange: Exchange) -> bool:
        for byte in data:
            exchange.send(bytes([byte]))
            exchange.wait(interval)
            if exchange.stopping.is_set():
                break
        exchange.wait(None)
        return False

    return behaviour


def endless_body(status: int = 200, chunk: bytes = b"x" * 16384) -> Behaviour:
    """A chunked response body that never ends, until the client hangs up."""

    def behaviour(exchange: Exchange) -> bool:
        head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
        exchange.send(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        with contextlib.suppress(OSError):  # the client hung up: what the test wants to see
            while not exchange.stopping.is_set():
                exchange.send(frame)
        return False

    return behaviour


class Receiver:
    """An HTTP receiver on 127.0.0.1 with per-path behaviours; use as a context manager."""

    def __init__(
        self,
        routes: Mapping[str, Behaviour] | None = None,
        *,
        default: Behaviour | None = None,
        tls: ssl.SSLContext | None = None,
        io_timeout: float = 10.0,
    ) -> None:
        self._routes = dict(routes or {})
        self._default = default or respond(204)
        self._tls = tls
        self._io_timeout = io_timeout
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._connections: dict[int, socket.socket] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self.errors: list[BaseException] = []
        self.server_names: list[str | None] = []
        if tls is not None:
            tls.sni_callback = self._record_sni

    # -- public API ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._listener is not None, "the receiver is not started"
        return int(self._listener.getsockname()[1])

    @property
    def url(self) -> str:
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def url_for(self, path: str) -> str:
        return self.url + path

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def route(self, path: str, behaviour: Behaviour) -> None:
        with self._lock:
            self._routes[path] = behaviour

    def start(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._spawn(self._accept_loop)

    def stop(self) -> None:
        """Stop accepting, wake every connection thread, and wait for them to finish."""
        self._stopping.set()
        with self._lock:
            threads = list(self._threads)
        if threads:
            threads[0].join(timeout=5.0)  # the accept loop: no new connections after this
        with self._lock:
            threads = list(self._threads)
            open_connections = list(self._connections.values())
        for connection in open_connections:
            _close_quietly(connection)
        for thread in threads:
            thread.join(timeout=5.0)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        number = 0
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            number += 1
            with self._lock:
                self._connections[number] = connection
            self._spawn(self._serve, number, connection)

    def _serve(self, number: int, connection: socket.socket) -> None:
        try:
            connection.settimeout(self._io_timeout)
            if self._tls is not None:
                connection = self._tls.wrap_socket(connection, server_side=True)
                with self._lock:
                    self._connections[number] = connection
            with connection.makefile("rb") as reader:
                self._converse(number, connection, reader)
        except OSError:
            pass  # the client went away or the receiver stopped: normal for these tests
        except Exception as error:  # recorded, so a broken receiver cannot hide
            self.errors.append(error)
        finally:
            with self._lock:
                self._connections.pop(number, None)
            _close_quietly(connection)

    def _converse(self, number: int, connection: socket.socket, reader: io.BufferedIOBase) -> None:
        while not self._stopping.is_set():
            request = _read_request(reader, number)
            if request is None:
                return
            with self._lock:
                self._requests.append(request)
                behaviour = self._routes.get(request.path, self._default)
            if not behaviour(Exchange(request, connection, self._stopping)):
                return

    def _record_sni(self, _socket: object, server_name: str | None, _context: object) -> None:
        self.server_names.append(server_name)


def _read_request(reader: io.BufferedIOBase, connection: int) -> RecordedRequest | None:
    line = reader.readline(65536)
    if not line.strip():
        return None
    method, target, _version = line.decode("latin-1").split()
    headers: dict[str, str] = {}
    while True:
        header_line = reader.readline(65536).decode("latin-1")
        if header_line in ("\r\n", "\n", ""):
            break
        name, _, value = header_line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", "0")))
    return RecordedRequest(method, target, headers, body, connection)


def _response_bytes(status: int, body: bytes, headers: Mapping[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _close_quietly(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
    connection.close()
