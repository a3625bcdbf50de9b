"""Webhooks on the wire: Standard Webhooks signatures, the SSRF guard and the sender.

Signatures follow Standard Webhooks 1.0 (the algorithm of the ``standardwebhooks`` package):
HMAC-SHA256 over ``{webhook-id}.{webhook-timestamp}.{body}`` keyed with the base64 secret
after its ``whsec_`` prefix. Signing and verifying are written here over the raw body bytes
because the package decodes bodies as text, reads the wall clock for the timestamp check
and crashes on malformed signature lists; the tests check both directions against it.

The sender connects only to addresses it has checked: resolution, the SSRF check and the
TCP connect happen together in one network backend, so a DNS answer that changes between
check and connect (DNS rebinding) cannot steer a delivery inward. The URL's host still
names the Host header, the TLS SNI and the certificate check.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import math
import secrets as secrets_module
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any

import httpcore
import httpx

from careloop.domain.errors import CareloopError, NotAuthenticated
from careloop.domain.webhook_policy import Attempt, parse_retry_after
from careloop.services.ports import Clock, SystemClock

SECRET_PREFIX = "whsec_"  # noqa: S105 - the key format marker, not a key
DEFAULT_TOLERANCE = timedelta(minutes=5)
MAX_RESPONSE_BYTES = 64 * 1024
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
DEFAULT_TOTAL_TIMEOUT = 10.0

Resolver = Callable[[str, int], list[str]]
"""Maps a host and port to the IP addresses to connect to (``system_resolve`` by default)."""


class WebhookVerificationError(NotAuthenticated):
    """An inbound webhook failed verification; answer 401 and store nothing."""

    code = "webhook_signature_invalid"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TargetRefused(CareloopError):
    """A webhook URL is not a safe target: wrong scheme, credentials or an inward address."""

    code = "webhook_target_refused"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- signatures -------------------------------------------------------------------------


def new_secret() -> str:
    """A fresh signing secret: 32 random bytes, base64, with the ``whsec_`` prefix."""
    return SECRET_PREFIX + base64.b64encode(secrets_module.token_bytes(32)).decode("ascii")


def sign(secrets: Sequence[str], msg_id: str, timestamp: datetime, body: bytes) -> str:
    """The ``webhook-signature`` value: one ``v1,<base64>`` per secret, space-separated.

    During a rotation pass both the new and the old secret, so receivers that know either
    keep verifying.
    """
    if not secrets:
        raise ValueError("at least one signing secret is needed")
    if timestamp.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    stamp = str(math.floor(timestamp.timestamp()))
    return " ".join(
        "v1," + base64.b64encode(_digest(_secret_key(s), msg_id, stamp, body)).decode("ascii")
        for s in secrets
    )


def signed_headers(
    secrets: Sequence[str],
    msg_id: str,
    timestamp: datetime,
    body: bytes,
    content_type: str = "application/json",
) -> dict[str, str]:
    """The headers of one signed delivery."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(math.floor(timestamp.timestamp())),
        "webhook-signature": sign(secrets, msg_id, timestamp, body),
        "content-type": content_type,
    }


def verify(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> None:
    """Accept the webhook if any secret matches any ``v1`` signature within the tolerance.

    Raises ``WebhookVerificationError`` otherwise; header names are case-insensitive.
    """
    if not secrets:
        raise WebhookVerificationError("no secret is configured for this source")
    lowered = {name.lower(): value for name, value in headers.items()}
    missing = [
        name
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
        if not lowered.get(name)
    ]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    msg_id, raw_stamp = lowered["webhook-id"], lowered["webhook-timestamp"].strip()
    if not (raw_stamp.isascii() and raw_stamp.isdigit() and len(raw_stamp) <= 12):
        raise WebhookVerificationError("webhook-timestamp is not a unix timestamp")
    age = now.timestamp() - int(raw_stamp)
    if age > tolerance.total_seconds():
        raise WebhookVerificationError("webhook-timestamp is too old")
    if -age > tolerance.total_seconds():
        raise WebhookVerificationError("webhook-timestamp is in the future")
    offered = _offered_signatures(lowered["webhook-signature"])
    stamp = str(int(raw_stamp))
    for secret in secrets:
        expected = _digest(_secret_key(secret), msg_id, stamp, body)
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return
    raise WebhookVerificationError("no signature matches")


def _secret_key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except ValueError as error:
        raise ValueError("a webhook secret must be base64, optionally prefixed whsec_") from error
    if not key:
        raise ValueError("a webhook secret may not be empty")
    return key


def _digest(key: bytes, msg_id: str, stamp: str, body: bytes) -> bytes:
    return hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()


def _offered_signatures(header: str) -> list[bytes]:
    """The decoded ``v1`` signatures; other versions and malformed entries are skipped."""
    offered = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            offered.append(base64.b64decode(encoded, validate=True))
        except ValueError:
            continue
    return offered


# --- SSRF guard -------------------------------------------------------------------------


def system_resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host``, in its order, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_target(url: str, allow_private: bool, *, resolve: Resolver = system_resolve) -> None:
    """Refuse URLs a webhook must never reach; ``allow_private`` is for development only.

    Every address the host resolves to must be public: one inward address among many is
    enough to refuse, since the connection could use any of them.
    """
    host, port = _target(url)
    try:
        addresses = resolve(host, port)
    except OSError as error:
        raise TargetRefused(f"{host} does not resolve: {error}") from error
    _refuse_inward(host, addresses, allow_private)


@functools.lru_cache(maxsize=1024)
def _parsed(url: str) -> httpx.URL:
    """A subscription's URL parsed once, not twice per delivery (httpx.URL is immutable)."""
    return httpx.URL(url)


def _target(url: str) -> tuple[str, int]:
    try:
        parsed = _parsed(url)
    except httpx.InvalidURL as error:
        raise TargetRefused(f"invalid URL: {error}") from error
    if parsed.scheme not in ("http", "https"):
        raise TargetRefused(f"scheme {parsed.scheme!r} is not http or https")
    if parsed.userinfo:
        raise TargetRefused("credentials in the URL are not allowed")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise TargetRefused("the URL has no host")
    return host, parsed.port or (443 if parsed.scheme == "https" else 80)


def _refuse_inward(host: str, addresses: list[str], allow_private: bool) -> None:
    if not addresses:
        raise TargetRefused(f"{host} resolves to no address")
    for address in [] if allow_private else addresses:
        problem = _inward(address)
        if problem:
            raise TargetRefused(f"{host} resolves to {address}, {problem}")


def _inward(address: str) -> str | None:
    """Why an address must not be a webhook target, or None when it is public."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            problem = _inward(str(embedded))
            return None if problem is None else f"an IPv6 form of {embedded} ({problem})"
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
        ("not globally routable", not ip.is_global),
    )
    return next((f"a {label} address" for label, flagged in checks if flagged), None)


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


# --- pinned, deadline-bounded connections -----------------------------------------------

# The monotonic time by which the current delivery must finish; set by WebhookSender.send
# for its own thread, read by every socket operation of that delivery.
_DEADLINE: ContextVar[float | None] = ContextVar("careloop_webhook_deadline", default=None)


def _bounded(timeout: float | None, expired: type[Exception]) -> float | None:
    """The per-operation timeout, shortened so no delivery outlives its total time limit."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the delivery's total time limit was reached")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Resolves once, checks every address, then connects only to those addresses."""

    def __init__(self, allow_private: bool, resolve: Resolver) -> None:
        self._allow_private = allow_private
        self._resolve = resolve
        self._tcp = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self._resolve(host, port)
        except OSError as error:
            raise httpcore.ConnectError(f"{host} does not resolve: {error}") from error
        _refuse_inward(host, addresses, self._allow_private)
        failure: Exception = httpcore.ConnectError(f"no address of {host} accepted")
        for address in addresses:
            bounded = _bounded(timeout, httpcore.ConnectTimeout)
            try:
                stream = self._tcp.connect_tcp(
                    address, port, bounded, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error
                continue
            return _DeadlineStream(stream)
        raise failure

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks never connect to unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _PinnedTransport(httpx.HTTPTransport):
    """httpx's transport with our network backend in its connection pool.

    httpx 0.28 has no public hook for the network backend, so the pool it builds is
    replaced by an equivalent one carrying ours; request handling and the mapping of
    httpcore errors to httpx errors stay httpx's own.
    """

    def __init__(
        self, backend: _PinnedBackend, verify: ssl.SSLContext | bool, limits: httpx.Limits
    ) -> None:
        super().__init__(verify=verify, limits=limits, trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


# --- the sender ---------------------------------------------------------------------------


class WebhookSender:
    """One long-lived HTTP client for webhook deliveries, safe to share between threads.

    ``send`` never raises for trouble on the network or at the receiver: timeouts, refused
    or reset connections, TLS failures, garbage responses and refused targets all come back
    as an ``Attempt`` with an error and no status, for the retry policy to judge. Redirects
    are returned, not followed. At most ``max_response_bytes`` of a response body are read
    (only to keep the connection reusable); the rest is dropped with the connection.
    ``total_timeout`` bounds a whole delivery, so a receiver that trickles bytes cannot hold
    a worker past it (DNS resolution is the exception: the system resolver has its own).
    """

    def __init__(
        self,
        *,
        allow_private: bool = False,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        limits: httpx.Limits | None = None,
        verify: ssl.SSLContext | bool = True,
        clock: Clock | None = None,
        resolve: Resolver = system_resolve,
        user_agent: str = "careloop-webhooks",
    ) -> None:
        self._total_timeout = total_timeout
        self._max_response_bytes = max_response_bytes
        self._clock = clock or SystemClock()
        limits = limits or httpx.Limits(max_connections=100, keepalive_expiry=30.0)
        transport = _PinnedTransport(_PinnedBackend(allow_private, resolve), verify, limits)
        self._transport = transport
        self._client = httpx.Client(
            transport=transport,
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,  # an environment proxy would connect on our behalf, unchecked
            headers={"user-agent": user_agent},
        )

    def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> Attempt:
        """POST one delivery and report what happened."""
        started = time.perf_counter()
        token = _DEADLINE.set(time.monotonic() + self._total_timeout)
        try:
            return self._exchange(url, body, headers, started)
        except TargetRefused as error:
            return _failed(started, f"target refused: {error.reason}")
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            return _failed(started, _describe(error))
        finally:
            _DEADLINE.reset(token)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> WebhookSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _exchange(
        self, url: str, body: bytes, headers: Mapping[str, str], started: float
    ) -> Attempt:
        _target(url)  # scheme and credentials are refused before any I/O
        request = self._client.build_request("POST", _parsed(url), content=body, headers=headers)
        # Straight to the transport: of what the client's send adds, redirects are not
        # followed and there is no auth, and its cookie jar sent a receiver's cookies back
        # with later deliveries; skipping it saves a fifth of a delivery's time.
        response = self._transport.handle_request(request)
        try:
            body_error = self._drain(response)
        finally:
            response.close()
        retry_after = response.headers.get("retry-after")
        return Attempt(
            status_code=response.status_code,
            error=body_error,
            latency_ms=_elapsed_ms(started),
            retry_after=None
            if retry_after is None
            else parse_retry_after(retry_after, self._clock.now()),
        )

    def _drain(self, response: httpx.Response) -> str | None:
        """Read the body up to the cap, undecoded; an error here never hides the status."""
        received = 0
        try:
            for chunk in response.iter_raw():
                received += len(chunk)
                if received >= self._max_response_bytes:
                    break
        except httpx.HTTPError as error:
            return f"response body: {_describe(error)}"
        return None


_ERROR_KINDS: tuple[tuple[type[Exception], str], ...] = (
    (httpx.TimeoutException, "timeout"),
    (httpx.ConnectError, "connect"),
    (httpx.ProtocolError, "protocol"),
    (httpx.UnsupportedProtocol, "invalid url"),
    (httpx.InvalidURL, "invalid url"),
)


def _describe(error: Exception) -> str:
    """A short, stable-prefixed text for the delivery log: ``timeout: ...``, ``connect: ...``."""
    kind = next((name for cls, name in _ERROR_KINDS if isinstance(error, cls)), "network")
    detail = str(error) or type(error).__name__
    return f"{kind}: {detail}"[:500]


def _failed(started: float, error: str) -> Attempt:
    return Attempt(status_code=None, error=error, latency_ms=_elapsed_ms(started))


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
