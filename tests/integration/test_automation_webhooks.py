"""Outbound and inbound webhooks and duplicate detection, with real loopback receivers."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from standardwebhooks import Webhook

from careloop.adapters.cel_conditions import compile_condition
from careloop.adapters.webhooks import (
    WebhookSender,
    WebhookVerificationError,
    check_target,
    new_secret,
    signed_headers,
    verify,
)
from careloop.bootstrap import App, build_worker
from careloop.domain.errors import InvalidInput
from careloop.engine.worker import Worker
from careloop.services import automation_admin as admin
from careloop.services.cases import create_referral
from careloop.services.inbound import receive_webhook
from careloop.services.ports import ManualClock
from careloop.services.referral_input import validate_referral
from tests.conftest import ADMIN, INTAKE, referral_payload
from tests.support.governance import store_and_activate
from tests.support.receivers import Receiver, gone, respond, verify_signature

TOOLS = admin.WebhookTools(new_secret, check_target, compile_condition, allow_private=True)
PUBLIC_TOOLS = admin.WebhookTools(new_secret, check_target, compile_condition)


@pytest.fixture
def worker(app: App) -> Iterator[Worker]:
    sender = WebhookSender(allow_private=True)
    yield build_worker(app, sender=sender)
    sender.close()


def _subscribe(app: App, url: str, **values: Any) -> tuple[int, str]:
    row, secret = admin.create_subscription(
        app.deps, TOOLS, ADMIN, {"name": "ehr", "url": url, "event_types": ["case.*"], **values}
    )
    return int(row["id"]), secret


def _deliveries(app: App, subscription_id: int) -> list[dict[str, Any]]:
    return admin.list_deliveries(app.deps, ADMIN, subscription_id, None, 500)


def test_committed_events_reach_a_subscriber_signed_with_the_event_key_as_webhook_id(
    app: App, worker: Worker, clock: ManualClock
) -> None:
    clock.set(datetime.now(UTC))  # the reference verifier reads the wall clock
    with Receiver() as receiver:
        subscription_id, secret = _subscribe(app, receiver.url_for("/hook"))
        receiver.route("/hook", verify_signature([secret]))
        case, _ = create_referral(app.deps, INTAKE, validate_referral(referral_payload()))
        worker.run_until_idle()
        requests = receiver.requests
    with app.deps.read_uow() as work:
        keys = [e["idempotency_key"] for e in work.outbox.for_case(case.id)]
    assert [r.headers["webhook-id"] for r in requests] == keys
    first = requests[0]
    Webhook(secret).verify(first.body, first.headers)  # the reference library agrees
    body = json.loads(first.body)
    assert body["type"] == "case.created" and body["data"]["case_id"] == case.id
    deliveries = _deliveries(app, subscription_id)
    assert {d["status"] for d in deliveries} == {"delivered"}
    assert all(d["attempt_log"][0]["status_code"] == 204 for d in deliveries)


def test_a_filter_limits_deliveries_to_matching_cases(app: App, worker: Worker) -> None:
    with Receiver() as receiver:
        _subscribe(app, receiver.url, filter="case.specialty == 'oncology'")
        create_referral(app.deps, INTAKE, validate_referral(referral_payload()))
        oncology, _ = create_referral(
            app.deps, INTAKE, validate_referral(referral_payload(specialty="oncology"))
        )
        worker.run_until_idle()
        payloads = [json.loads(r.body)["data"] for r in receiver.requests]
    assert payloads and {p["case_id"] for p in payloads} == {oncology.id}


def test_a_failing_receiver_is_retried_on_schedule_then_dead_lettered_and_replayed(
    app: App, worker: Worker, clock: ManualClock
) -> None:
    with Receiver(default=respond(503)) as receiver:
        subscription_id, _ = _subscribe(app, receiver.url, event_types=["case.created"])
        create_referral(app.deps, INTAKE, validate_referral(referral_payload()))
        worker.run_until_idle()
        (delivery,) = _deliveries(app, subscription_id)
        assert delivery["status"] == "pending" and delivery["attempts"] == 1
        assert delivery["next_attempt_at"] - clock.now() <= timedelta(seconds=5.5)
        for _ in range(10):
            clock.advance(hours=11)
            worker.run_until_idle()
        (delivery,) = _deliveries(app, subscription_id)
        assert delivery["status"] == "dead" and delivery["attempts"] == 8
        assert [a["status_code"] for a in delivery["attempt_log"]] == [503] * 8
        assert len(receiver.requests) == 8
        receiver.route("/", respond(200))
        assert admin.replay_dead_letters(app.deps, ADMIN, "deliveries", None) == 1
        worker.run_until_idle()
    (delivery,) = _deliveries(app, subscription_id)
    assert delivery["status"] == "delivered" and delivery["attempts"] == 9


def test_a_410_disables_the_endpoint_and_parks_its_queue(app: App, worker: Worker) -> None:
    with Receiver(default=gone()) as receiver:
        subscription_id, _ = _subscribe(app, receiver.url)
        create_referral(app.deps, INTAKE, validate_referral(referral_payload()))
        worker.run_until_idle()
        sent = len(receiver.requests)
    (subscription,) = admin.list_subscriptions(app.deps, ADMIN)
    assert subscription["active"] is False and "410" in subscription["disabled_reason"]
    assert sent == 1  # nothing more was sent to a gone endpoint
    assert {d["status"] for d in _deliveries(app, subscription_id)} == {"disabled"}


def test_private_targets_are_refused_unless_allowed_for_development(app: App) -> None:
    for url in ("http://127.0.0.1:9/x", "http://169.254.169.254/latest", "file:///etc/passwd"):
        with pytest.raises(InvalidInput) as raised:
            admin.create_subscription(
                app.deps, PUBLIC_TOOLS, ADMIN, {"name": "x", "url": url, "event_types": ["*"]}
            )
        assert raised.value.problems[0].field == "url"
    assert admin.list_subscriptions(app.deps, ADMIN) == []


def test_a_rotated_secret_signs_with_both_until_the_rotation_finishes(
    app: App, worker: Worker, clock: ManualClock
) -> None:
    clock.set(datetime.now(UTC))  # the reference verifier reads the wall clock
    with Receiver() as receiver:
        subscription_id, old = _subscribe(app, receiver.url, event_types=["case.created"])
        new = admin.rotate_secret(app.deps, TOOLS, ADMIN, subscription_id)
        create_referral(app.deps, INTAKE, validate_referral(referral_payload()))
        worker.run_until_idle()
        admin.finish_rotation(app.deps, ADMIN, subscription_id)
        create_referral(app.deps, INTAKE, validate_referral(referral_payload(specialty="urology")))
        worker.run_until_idle()
        during, after = receiver.requests
    for secret in (old, new):
        Webhook(secret).verify(during.body, during.headers)
    Webhook(new).verify(after.body, after.headers)
    with pytest.raises(Exception, match="signature"):
        Webhook(old).verify(after.body, after.headers)


def _inbound_setup(app: App) -> str:
    text = """kind: rules
key: inbound-rules
version: 1
case_type: referral
rules:
  - key: payer-decision
    trigger: {on: webhook_received, source: payer-portal, event: authorization.approved}
    actions: [{create_task: {title: "Payer approved the authorization"}}]
"""
    store_and_activate(app, text, "inbound.yaml")
    return admin.put_inbound_source(
        app.deps,
        TOOLS,
        ADMIN,
        "payer-portal",
        {"case_field": "case_id", "event_field": "type", "events": ["authorization.approved"]},
    )


def test_an_inbound_webhook_is_verified_deduplicated_and_triggers_its_rule(
    app: App, worker: Worker, clock: ManualClock
) -> None:
    secret = _inbound_setup(app)
    case, _ = create_referral(app.deps, INTAKE, validate_referral(referral_payload()))
    body = json.dumps({"case_id": case.id, "type": "authorization.approved"}).encode()
    headers = signed_headers([secret], "msg_1", clock.now(), body)
    window = timedelta(minutes=5)
    first = receive_webhook(app.deps, verify, "payer-portal", headers, body, window)
    again = receive_webhook(app.deps, verify, "payer-portal", headers, body, window)
    assert first["accepted"] and again["duplicate"]
    worker.run_until_idle()
    with app.deps.read_uow() as work:
        tasks = [t["title"] for t in work.cases.tasks(case.id)]
    assert tasks.count("Payer approved the authorization") == 1


def test_a_badly_signed_inbound_webhook_is_refused_and_writes_nothing(
    app: App, clock: ManualClock
) -> None:
    secret = _inbound_setup(app)
    case, _ = create_referral(app.deps, INTAKE, validate_referral(referral_payload()))
    body = json.dumps({"case_id": case.id, "type": "authorization.approved"}).encode()
    with app.deps.read_uow() as work:
        before = len(work.outbox.for_case(case.id)), len(work.audit.for_case(case.id))
    forged = signed_headers([new_secret()], "msg_2", clock.now(), body)
    stale = signed_headers([secret], "msg_3", clock.now() - timedelta(hours=1), body)
    for headers in (forged, stale):
        with pytest.raises(WebhookVerificationError):
            receive_webhook(app.deps, verify, "payer-portal", headers, body, timedelta(minutes=5))
    with app.deps.read_uow() as work:
        after = len(work.outbox.for_case(case.id)), len(work.audit.for_case(case.id))
    assert after == before


def test_a_second_referral_for_the_same_patient_is_linked_flagged_and_reviewed_never_merged(
    app: App, worker: Worker
) -> None:
    first, _ = create_referral(app.deps, INTAKE, validate_referral(referral_payload()))
    typo = referral_payload()
    typo["patient"] = {**typo["patient"], "family_name": "Okafro", "given_name": "Adah"}  # type: ignore[dict-item]
    second, _ = create_referral(app.deps, INTAKE, validate_referral(typo))
    other = referral_payload(specialty="dermatology")
    third, _ = create_referral(app.deps, INTAKE, validate_referral(other))
    worker.run_until_idle()
    view = admin.case_automation(app.deps, ADMIN, second.id)
    assert [link["other_case_id"] for link in view["links"]] == [first.id]
    with app.deps.read_uow() as work:
        flagged = work.cases.get(second.id)
        tasks = [t["title"] for t in work.cases.tasks(second.id)]
        assert "possible_duplicate" not in work.cases.get(third.id).data.get("flags", [])
        assert work.cases.get(first.id).state == "intake_received"  # both still exist
    assert flagged.data["flags"] == ["possible_duplicate"]
    assert f"Review possible duplicate of referral #{first.id}" in tasks
