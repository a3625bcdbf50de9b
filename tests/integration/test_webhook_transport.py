"""Webhook transport against real receivers on loopback: signatures, hostile targets, SSRF."""

from __future__ import annotations

import base64
import socket
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from careloop.adapters.webhooks import (
    TargetRefused,
    WebhookSender,
    WebhookVerificationError,
    check_target,
    new_secret,
    sign,
    signed_headers,
    system_resolve,
    verify,
)
from careloop.domain.webhook_policy import Outcome, decide
from careloop.services.ports import ManualClock
from tests.support.receivers import (
    Behaviour,
    Receiver,
    close_connection,
    endless_body,
    garbage,
    gone,
    hang,
    redirect,
    reset_connection,
    respond,
    throttle,
    trickle,
    verify_signature,
)

BODY = b'{"type":"case.transitioned","data":{"case_id":42,"to":"scheduled"}}'
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PUBLIC_IP = "93.184.215.14"


@pytest.fixture
def sender() -> Iterator[WebhookSender]:
    """A development sender (loopback allowed) with short timeouts so failures are quick."""
    with WebhookSender(
        allow_private=True,
        timeout=httpx.Timeout(1.0, connect=1.0),
        total_timeout=3.0,
        clock=ManualClock(START),
    ) as client:
        yield client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running
    assert running.errors == []


class ScriptedResolver:
    """Answers each lookup with the next scripted list of addresses (the last one repeats)."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def rejection(
    secrets: list[str], headers: dict[str, str], body: bytes, now: datetime
) -> str | None:
    """verify()'s reason for refusing, or None when it accepts."""
    try:
        verify(secrets, headers, body, now)
    except WebhookVerificationError as error:
        assert error.code == "webhook_signature_invalid"
        return error.reason
    return None


# --- signatures --------------------------------------------------------------------------


def test_a_signed_delivery_verifies_with_the_standardwebhooks_library(
    sender: WebhookSender, receiver: Receiver
) -> None:
    secret = new_secret()
    receiver.route("/hooks", verify_signature([secret]))
    headers = signed_headers([secret], "msg_2f9c", datetime.now(UTC), BODY)

    attempt = sender.send(receiver.url_for("/hooks"), BODY, headers)

    assert attempt.status_code == 204
    assert attempt.error is None
    [request] = receiver.requests
    assert request.method == "POST"
    assert request.body == BODY
    assert request.headers["webhook-id"] == "msg_2f9c"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-signature"].startswith("v1,")


@pytest.mark.parametrize(
    ("receiver_knows", "status"), [("new", 204), ("old", 204), ("neither", 401)]
)
def test_during_rotation_a_receiver_knowing_either_secret_verifies(
    sender: WebhookSender, receiver: Receiver, receiver_knows: str, status: int
) -> None:
    old, new = new_secret(), new_secret()
    known = {"new": [new], "old": [old], "neither": [new_secret()]}[receiver_knows]
    receiver.route("/hooks", verify_signature(known))
    headers = signed_headers([new, old], "msg_rot", datetime.now(UTC), BODY)

    attempt = sender.send(receiver.url_for("/hooks"), BODY, headers)

    assert len(headers["webhook-signature"].split(" ")) == 2
    assert attempt.status_code == status


def test_signatures_equal_the_library_own_signatures() -> None:
    secret, stamp = new_secret(), datetime(2026, 3, 2, 9, 0, 30, 900_000, tzinfo=UTC)
    ours = sign([secret], "msg_1", stamp, BODY)

    assert ours == Webhook(secret).sign("msg_1", stamp, BODY.decode())


def test_verify_accepts_headers_signed_by_the_library() -> None:
    secret, now = new_secret(), datetime.now(UTC)
    headers = {
        "webhook-id": "msg_lib",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign("msg_lib", now, BODY.decode()),
    }

    assert rejection([secret], headers, BODY, now) is None


def test_verify_accepts_if_any_secret_matches_any_signature() -> None:
    old, new, unrelated = new_secret(), new_secret(), new_secret()
    headers = signed_headers([new, old], "msg_any", START, BODY)

    assert rejection([unrelated, old], headers, BODY, START) is None
    assert rejection([new], headers, BODY, START) is None


def test_verify_reads_header_names_case_insensitively() -> None:
    secret = new_secret()
    headers = {k.upper(): v for k, v in signed_headers([secret], "m", START, BODY).items()}

    assert rejection([secret], headers, BODY, START) is None


def test_verify_accepts_a_timestamp_exactly_at_the_tolerance() -> None:
    secret = new_secret()
    headers = signed_headers([secret], "msg_edge", START, BODY)

    assert rejection([secret], headers, BODY, START + timedelta(minutes=5)) is None
    assert rejection([secret], headers, BODY, START - timedelta(minutes=5)) is None


def test_bodies_that_are_not_utf8_still_sign_and_verify() -> None:
    secret, body = new_secret(), b"\xff\xfe\x00binary"
    headers = signed_headers([secret], "msg_bin", START, body)

    assert rejection([secret], headers, body, START) is None


def test_the_timestamp_header_is_unix_time_whatever_the_timezone() -> None:
    paris = START.astimezone(timezone(timedelta(hours=1)))
    headers = signed_headers([new_secret()], "m", paris, BODY)

    assert headers["webhook-timestamp"] == str(int(START.timestamp()))


def _tampered(headers: dict[str, str], **changes: str | None) -> dict[str, str]:
    changed = dict(headers)
    for name, value in changes.items():
        key = name.replace("_", "-")
        if value is None:
            del changed[key]
        else:
            changed[key] = value
    return changed


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("tampered_body", "no signature matches"),
        ("wrong_secret", "no signature matches"),
        ("stale", "too old"),
        ("future", "in the future"),
        ("no_id", "missing header(s): webhook-id"),
        ("no_timestamp", "missing header(s): webhook-timestamp"),
        ("no_signature", "missing header(s): webhook-signature"),
        ("other_id", "no signature matches"),
        ("shifted_timestamp", "no signature matches"),
        ("garbage_signature", "no signature matches"),
        ("asymmetric_version_only", "no signature matches"),
        ("timestamp_not_a_number", "not a unix timestamp"),
    ],
)
def test_verify_rejects(case: str, expected: str) -> None:
    secret = new_secret()
    good = signed_headers([secret], "msg_7", START, BODY)
    signature = good["webhook-signature"]
    headers, body, secrets, now = good, BODY, [secret], START
    if case == "tampered_body":
        body = BODY.replace(b"42", b"43")
    elif case == "wrong_secret":
        secrets = [new_secret()]
    elif case == "stale":
        now = START + timedelta(minutes=5, seconds=1)
    elif case == "future":
        now = START - timedelta(minutes=5, seconds=1)
    elif case.startswith("no_"):
        headers = _tampered(good, **{f"webhook_{case[3:]}": None})
    elif case == "other_id":
        headers = _tampered(good, webhook_id="msg_8")
    elif case == "shifted_timestamp":
        headers = _tampered(good, webhook_timestamp=str(int(START.timestamp()) + 1))
    elif case == "garbage_signature":
        headers = _tampered(good, webhook_signature="v1 ,,, v1,@@@ nonsense v1,")
    elif case == "asymmetric_version_only":
        headers = _tampered(good, webhook_signature=signature.replace("v1,", "v1a,"))
    elif case == "timestamp_not_a_number":
        headers = _tampered(good, webhook_timestamp="1.7e9")

    reason = rejection(secrets, headers, body, now)

    assert reason is not None
    assert expected in reason


def test_verify_with_no_configured_secret_refuses() -> None:
    headers = signed_headers([new_secret()], "m", START, BODY)

    assert rejection([], headers, BODY, START) == "no secret is configured for this source"


def test_new_secrets_are_32_random_bytes_the_library_accepts() -> None:
    first, second = new_secret(), new_secret()

    assert first.startswith("whsec_")
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32
    assert first != second
    assert Webhook(first).sign("m", START, "x").startswith("v1,")


# --- the sender against hostile and broken receivers ---------------------------------------


def test_garbage_instead_of_http_is_a_protocol_error(sender: WebhookSender) -> None:
    with Receiver(default=garbage()) as receiver:
        attempt = sender.send(receiver.url_for("/"), BODY, {})

    assert attempt.status_code is None
    assert attempt.error is not None
    assert attempt.error.startswith("protocol:")


def test_a_receiver_that_hangs_times_out(receiver: Receiver) -> None:
    receiver.route("/slow", hang())
    with WebhookSender(allow_private=True, timeout=httpx.Timeout(0.5)) as sender:
        attempt = sender.send(receiver.url_for("/slow"), BODY, {})

    assert attempt.status_code is None
    assert attempt.error is not None
    assert attempt.error.startswith("timeout:")
    assert 450 <= attempt.latency_ms < 3000


def test_a_receiver_that_trickles_bytes_is_cut_off_by_the_total_time_limit(
    receiver: Receiver,
) -> None:
    # Each byte arrives well within the read timeout; only the total limit can stop this.
    receiver.route("/trickle", trickle(interval=0.2, data=b"HTTP/1.1 200 OK\r\n" * 20))
    with WebhookSender(allow_private=True, timeout=httpx.Timeout(1.0), total_timeout=1.0) as sender:
        attempt = sender.send(receiver.url_for("/trickle"), BODY, {})

    assert attempt.status_code is None
    assert attempt.error is not None
    assert attempt.error.startswith("timeout:")
    assert 900 <= attempt.latency_ms < 2500


def test_a_redirect_is_reported_and_never_followed(
    sender: WebhookSender, receiver: Receiver
) -> None:
    receiver.route("/hooks", redirect(receiver.url_for("/elsewhere")))

    attempt = sender.send(receiver.url_for("/hooks"), BODY, {})

    assert attempt.status_code == 302
    assert [request.path for request in receiver.requests] == ["/hooks"]
    decision = decide(1, attempt, START)
    assert decision.outcome is Outcome.RETRY
    assert "redirects are not followed" in decision.reason


def test_a_cookie_set_by_a_receiver_is_never_sent_back(
    sender: WebhookSender, receiver: Receiver
) -> None:
    """Deliveries carry no state between them: a cookie a receiver sets is not kept."""
    receiver.route("/hooks", respond(204, headers={"Set-Cookie": "session=abc; Path=/"}))

    first = sender.send(receiver.url_for("/hooks"), BODY, {})
    second = sender.send(receiver.url_for("/hooks"), BODY, {})

    assert (first.status_code, second.status_code) == (204, 204)
    assert [request.headers.get("cookie") for request in receiver.requests] == [None, None]


def test_a_connection_reset_is_a_network_error(sender: WebhookSender, receiver: Receiver) -> None:
    receiver.route("/reset", reset_connection())

    attempt = sender.send(receiver.url_for("/reset"), BODY, {})

    assert attempt.status_code is None
    assert attempt.error is not None
    assert "reset" in attempt.error.lower()


def test_a_connection_closed_without_a_response_is_a_protocol_error(
    sender: WebhookSender, receiver: Receiver
) -> None:
    receiver.route("/close", close_connection())

    attempt = sender.send(receiver.url_for("/close"), BODY, {})

    assert attempt.status_code is None
    assert attempt.error == "protocol: Server disconnected without sending a response."


def test_a_refused_connection_is_a_connect_error(sender: WebhookSender) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        closed_port = probe.getsockname()[1]

    attempt = sender.send(f"http://127.0.0.1:{closed_port}/hooks", BODY, {})

    assert attempt.status_code is None
    assert attempt.error is not None
    assert attempt.error.startswith("connect:")


def test_410_gone_disables_the_endpoint(sender: WebhookSender, receiver: Receiver) -> None:
    receiver.route("/gone", gone())

    attempt = sender.send(receiver.url_for("/gone"), BODY, {})

    assert attempt.status_code == 410
    assert decide(1, attempt, START).outcome is Outcome.DISABLE_ENDPOINT


def test_429_retry_after_seconds_sets_the_next_attempt(
    sender: WebhookSender, receiver: Receiver
) -> None:
    receiver.route("/busy", throttle("120"))

    attempt = sender.send(receiver.url_for("/busy"), BODY, {})

    assert attempt.status_code == 429
    assert attempt.retry_after == timedelta(seconds=120)
    assert decide(1, attempt, START).next_attempt_at == START + timedelta(seconds=120)


def test_503_retry_after_http_date_is_read_against_the_injected_clock(
    sender: WebhookSender, receiver: Receiver
) -> None:
    later = format_datetime(START + timedelta(minutes=10), usegmt=True)
    receiver.route("/down", throttle(later, status=503))

    attempt = sender.send(receiver.url_for("/down"), BODY, {})

    assert attempt.status_code == 503
    assert attempt.retry_after == timedelta(minutes=10)


def test_an_endless_response_body_is_read_only_up_to_the_cap(
    sender: WebhookSender, receiver: Receiver
) -> None:
    receiver.route("/flood", endless_body())

    attempt = sender.send(receiver.url_for("/flood"), BODY, {})

    assert attempt.status_code == 200
    assert attempt.error is None  # stopped by the cap, not by the 3 s time limit
    assert attempt.latency_ms < 2000


def test_connections_are_kept_alive_between_deliveries(
    sender: WebhookSender, receiver: Receiver
) -> None:
    receiver.route("/ok", respond(200, b"thanks"))

    first = sender.send(receiver.url_for("/ok"), BODY, {})
    second = sender.send(receiver.url_for("/ok"), BODY, {})

    assert (first.status_code, second.status_code) == (200, 200)
    assert [request.connection for request in receiver.requests] == [1, 1]
    assert first.latency_ms > 0


@pytest.mark.parametrize(
    "behaviour",
    [garbage(), hang(), redirect("http://127.0.0.1:1/"), close_connection(), reset_connection()],
    ids=["garbage", "hang", "redirect", "close", "reset"],
)
def test_a_misbehaving_target_becomes_a_scheduled_retry(
    sender: WebhookSender, behaviour: Behaviour
) -> None:
    with Receiver(default=behaviour) as receiver:
        attempt = sender.send(receiver.url_for("/hooks"), BODY, {})

    decision = decide(1, attempt, START)
    assert decision.outcome is Outcome.RETRY
    assert decision.next_attempt_at is not None
    assert timedelta(seconds=4.5) <= decision.next_attempt_at - START <= timedelta(seconds=5.5)


@pytest.mark.parametrize(
    "url", ["ftp://example.com/hook", "http://user:pass@127.0.0.1:9/hook", "http://[::1/", "hooks"]
)
def test_the_sender_refuses_bad_urls_without_raising(sender: WebhookSender, url: str) -> None:
    attempt = sender.send(url, BODY, {})

    assert attempt.status_code is None
    assert attempt.error is not None
    assert attempt.error.startswith("target refused:")


# --- SSRF ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hooks",
        "http://127.1/hooks",
        "http://2130706433/hooks",
        "http://10.0.0.5/hooks",
        "http://172.16.3.4/hooks",
        "http://192.168.1.10/hooks",
        "http://100.64.0.1/hooks",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0/hooks",
        "http://224.0.0.1/hooks",
        "http://[::1]/hooks",
        "http://[::]/hooks",
        "http://[::ffff:127.0.0.1]/hooks",
        "http://[::ffff:169.254.169.254]/hooks",
        "http://[2002:7f00:1::]/hooks",
        "http://[64:ff9b::a00:1]/hooks",
        "http://[fe80::1]/hooks",
        "http://[fc00::1]/hooks",
        "http://localhost/hooks",
        "file:///etc/passwd",
        "gopher://example.com/",
        "http://user:pass@example.com/hooks",
        "http:///hooks",
    ],
)
def test_inward_and_unsafe_targets_are_refused(url: str) -> None:
    with pytest.raises(TargetRefused) as refused:
        check_target(url, allow_private=False)

    assert refused.value.code == "webhook_target_refused"


@pytest.mark.parametrize(
    "url",
    [
        f"https://{PUBLIC_IP}/hooks",
        "http://[2606:4700:4700::1111]/hooks",
        "http://[::ffff:8.8.8.8]/",
    ],
)
def test_public_addresses_are_accepted(url: str) -> None:
    check_target(url, allow_private=False)  # raises TargetRefused otherwise


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/hooks", "http://localhost/hooks"])
def test_loopback_is_allowed_only_when_explicitly_allowed(url: str) -> None:
    with pytest.raises(TargetRefused):
        check_target(url, allow_private=False)
    check_target(url, allow_private=True)


def test_allowing_private_targets_still_refuses_other_schemes_and_credentials() -> None:
    for url in ("file:///etc/passwd", "http://admin:secret@127.0.0.1/"):
        with pytest.raises(TargetRefused):
            check_target(url, allow_private=True)


def test_a_host_with_one_private_address_among_public_ones_is_refused() -> None:
    resolver = ScriptedResolver([PUBLIC_IP, "10.0.0.7"])

    with pytest.raises(TargetRefused, match=r"10\.0\.0\.7, a private address"):
        check_target("https://hooks.example.test/", allow_private=False, resolve=resolver)


def test_an_unresolvable_host_is_refused() -> None:
    def nowhere(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(TargetRefused, match="does not resolve"):
        check_target("https://nowhere.example.test/", allow_private=False, resolve=nowhere)


def test_a_host_that_stops_resolving_is_a_connect_error_for_the_sender() -> None:
    def nowhere(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with WebhookSender(resolve=nowhere) as production:
        attempt = production.send("https://nowhere.example.test/hooks", BODY, {})

    assert attempt.status_code is None
    assert attempt.error is not None
    assert attempt.error.startswith("connect: nowhere.example.test does not resolve")


def test_the_sender_refuses_loopback_unless_allowed(receiver: Receiver) -> None:
    with WebhookSender() as production:
        attempt = production.send(receiver.url_for("/hooks"), BODY, {})

    assert attempt.status_code is None
    assert attempt.error is not None
    assert attempt.error.startswith("target refused:")
    assert "loopback" in attempt.error
    assert receiver.requests == []


def test_dns_rebinding_after_the_check_cannot_reach_loopback(receiver: Receiver) -> None:
    # The first lookup (at subscription time) says public; the next one says loopback.
    rebinding = ScriptedResolver([PUBLIC_IP], ["127.0.0.1"])
    url = f"http://rebind.example.test:{receiver.port}/hooks"
    check_target(url, allow_private=False, resolve=rebinding)

    with WebhookSender(resolve=rebinding) as production:
        attempt = production.send(url, BODY, {})

    assert attempt.error is not None
    assert "rebind.example.test resolves to 127.0.0.1, a loopback address" in attempt.error
    assert receiver.requests == []
    assert rebinding.lookups == ["rebind.example.test", "rebind.example.test"]


def test_the_sender_connects_to_the_checked_address_and_keeps_the_host_header(
    receiver: Receiver,
) -> None:
    resolver = ScriptedResolver(["127.0.0.1"])
    with WebhookSender(allow_private=True, resolve=resolver) as sender:
        attempt = sender.send(f"http://hooks.example.test:{receiver.port}/hooks", BODY, {})

    assert attempt.status_code == 204
    [request] = receiver.requests
    assert request.headers["host"] == f"hooks.example.test:{receiver.port}"
    assert resolver.lookups == ["hooks.example.test"]


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for hooks.example.test and its key."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.example.test")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.example.test")]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_tls_uses_the_url_host_for_sni_and_the_certificate_while_connecting_to_the_pinned_ip(
    tls_files: tuple[Path, Path],
) -> None:
    cert_file, key_file = tls_files
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    trust = ssl.create_default_context(cafile=str(cert_file))
    resolver = ScriptedResolver(["127.0.0.1"])

    with (
        Receiver(tls=server_context) as receiver,
        WebhookSender(allow_private=True, verify=trust, resolve=resolver) as sender,
    ):
        attempt = sender.send(f"https://hooks.example.test:{receiver.port}/hooks", BODY, {})
        by_ip = sender.send(f"https://127.0.0.1:{receiver.port}/hooks", BODY, {})

    assert attempt.status_code == 204
    assert receiver.server_names[0] == "hooks.example.test"
    assert by_ip.status_code is None  # the certificate does not name 127.0.0.1: refused
    assert by_ip.error is not None
    assert by_ip.error.startswith("connect:")
    assert "certificate" in by_ip.error.lower()


def test_the_system_resolver_lists_each_address_once() -> None:
    assert system_resolve("127.0.0.1", 80) == ["127.0.0.1"]
