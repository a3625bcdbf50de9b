"""The automation API over HTTP: definitions, subscriptions, inbound webhooks, dead
letters and a referral's automation log."""

from __future__ import annotations

import json

import httpx

from careloop.adapters.webhooks import new_secret, signed_headers
from careloop.bootstrap import build_worker
from tests.conftest import referral_payload
from tests.e2e.conftest import Clients, Server
from tests.support.governance import second_admin_client

DEFINITIONS = "/api/v1/automation/definitions"
PROBLEM_JSON = "application/problem+json"
RULES = """kind: rules
key: api-rules
version: 1
case_type: referral
rules:
  - key: letter-task
    trigger: created
    actions: [{create_task: {title: "Check the referral letter"}}]
"""


def test_an_invalid_rule_set_is_a_422_listing_each_problem_with_its_line(api: Clients) -> None:
    bad = RULES.replace("trigger: created", "trigger: {on: transitioned, to: nowhere}")
    response = api("administrator").post(DEFINITIONS, json={"text": bad, "source": "bad.yaml"})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert problem["code"] == "definition_invalid"
    assert problem["errors"] == [
        {"source": "bad.yaml", "line": 7, "problem": "unknown state 'nowhere'"}
    ]
    listed = api("administrator").get(DEFINITIONS, params={"kind": "rules"}).json()["items"]
    assert [(d["key"], d["active"]) for d in listed] == [("referral-automation", True)]


def test_only_automation_managers_may_store_or_activate_rules(api: Clients) -> None:
    for role in ("intake_coordinator", "auditor", "integration_client"):
        response = api(role).post(DEFINITIONS, json={"text": RULES, "activate": True})
        assert response.status_code == 403, role
    assert api("auditor").get(DEFINITIONS).status_code == 200  # reading is allowed
    assert api("intake_coordinator").get(DEFINITIONS).status_code == 403


def test_a_stored_rule_set_is_activated_once_approved_and_its_runs_show_on_the_referral(
    api: Clients, shared_server: Server
) -> None:
    admin = api("administrator")
    stored = admin.post(DEFINITIONS, json={"text": RULES, "source": "api-rules.yaml"})
    assert stored.status_code == 201 and stored.json()["stored"] is True
    proposed = admin.post(f"{DEFINITIONS}/rules/api-rules/1/activate")
    assert proposed.status_code == 202
    assert proposed.json()["active"] is False and proposed.json()["change_status"] == "proposed"
    assert "second administrator" in proposed.json()["detail"]
    with second_admin_client(shared_server.app, shared_server.base_url) as second:
        approved = second.post(
            f"/api/v1/governance/changes/{proposed.json()['change_id']}/approve", json={}
        )
    assert approved.status_code == 200, approved.text
    case = api("intake_coordinator").post("/api/v1/referrals", json=referral_payload())
    worker = build_worker(shared_server.app)
    worker.run_until_idle()
    worker.sender.close()  # type: ignore[attr-defined]
    view = admin.get(f"/api/v1/referrals/{case.json()['id']}/automation")
    assert view.status_code == 200
    runs = {r["rule_key"]: r["outcome"] for r in view.json()["runs"]}
    assert runs["letter-task"] == "applied" and runs["route-new-referral"] == "applied"
    assert {t["kind"] for t in view.json()["timers"]} == {"sla"}


def test_a_subscription_shows_its_secret_once_and_refuses_a_private_target(api: Clients) -> None:
    admin = api("administrator")
    refused = admin.post(
        "/api/v1/webhooks/subscriptions",
        json={"name": "local", "url": "http://127.0.0.1:8080/x", "event_types": ["case.*"]},
    )
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "url"
    bad_filter = admin.post(
        "/api/v1/webhooks/subscriptions",
        json={
            "name": "f",
            "url": "https://93.184.215.14/h",
            "event_types": ["case.*"],
            "filter": "case.nope == 1",
        },
    )
    assert bad_filter.status_code == 422 and bad_filter.json()["errors"][0]["field"] == "filter"
    listed = admin.get("/api/v1/webhooks/subscriptions").json()["items"]
    assert all("secret" not in item and "secrets" not in item for item in listed)
    assert api("scheduler").get("/api/v1/webhooks/subscriptions").status_code == 403


def test_an_inbound_webhook_with_a_bad_signature_is_a_401_and_a_good_one_is_accepted(
    api: Clients, shared_server: Server
) -> None:
    source = api("administrator").put(
        "/api/v1/webhooks/sources/payer-portal",
        json={"case_field": "case_id", "event_field": "type", "events": ["authorization.approved"]},
    )
    secret = source.json()["secret"]
    case_id = (
        api("intake_coordinator").post("/api/v1/referrals", json=referral_payload()).json()["id"]
    )
    body = json.dumps({"case_id": case_id, "type": "authorization.approved"}).encode()
    now = shared_server.app.deps.clock.now()
    anonymous = httpx.Client(base_url=shared_server.base_url, timeout=10)
    url = "/api/v1/webhooks/inbound/payer-portal"
    forged = anonymous.post(
        url, content=body, headers=signed_headers([new_secret()], "m1", now, body)
    )
    assert forged.status_code == 401 and forged.json()["code"] == "webhook_signature_invalid"
    good = anonymous.post(url, content=body, headers=signed_headers([secret], "m2", now, body))
    assert good.status_code == 200 and good.json()["accepted"] is True
    replayed = anonymous.post(url, content=body, headers=signed_headers([secret], "m2", now, body))
    assert replayed.json()["duplicate"] is True
    unknown = anonymous.post("/api/v1/webhooks/inbound/nobody", content=body)
    assert unknown.status_code == 404
    anonymous.close()


def test_dead_letters_are_listed_and_replayed_by_administrators(api: Clients) -> None:
    listed = api("administrator").get("/api/v1/dead-letters")
    assert listed.status_code == 200 and set(listed.json()) == {"events", "deliveries"}
    replay = api("administrator").post("/api/v1/dead-letters/replay", json={"kind": "events"})
    assert replay.status_code == 200 and replay.json() == {"replayed": 0}
    wrong = api("administrator").post("/api/v1/dead-letters/replay", json={"kind": "mail"})
    assert wrong.status_code == 422
    assert api("clinical_triage").get("/api/v1/dead-letters").status_code == 403
