"""Change governance and audit reports over HTTP: four-eyes activation, refusals as
problem+json, diffs, rollbacks, the governance report and the audit report with its
CSV export."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import START, referral_payload
from tests.e2e.conftest import Server
from tests.support.governance import second_admin_client

GOVERNANCE = "/api/v1/governance"
PROBLEM_JSON = "application/problem+json"
RULES = """kind: rules
key: http-rules
version: {version}
case_type: referral
rules:
  - key: letter-task
    trigger: created
    actions: [{{create_task: {{title: "Check the letter"}}}}]
"""


@pytest.fixture
def second(server: Server) -> Iterator[httpx.Client]:
    with second_admin_client(server.app, server.base_url) as client:
        yield client


def _active_rules(server: Server) -> list[tuple[str, int]]:
    with server.client("auditor") as auditor:
        listed = auditor.get("/api/v1/automation/definitions", params={"kind": "rules"})
    return [(d["key"], d["version"]) for d in listed.json()["items"] if d["active"]]


def _submit(server: Server, version: int = 1) -> dict[str, object]:
    with server.client() as admin:
        response = admin.post(
            f"{GOVERNANCE}/definitions",
            json={"text": RULES.format(version=version), "source": "http.yaml", "reason": "new"},
        )
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def test_a_change_takes_effect_only_when_a_second_administrator_approves_it(
    server: Server, second: httpx.Client
) -> None:
    change = _submit(server)
    assert change["status"] == "proposed" and change["stored"] is True
    assert ("http-rules", 1) not in _active_rules(server)

    with server.client() as admin:
        own = admin.post(f"{GOVERNANCE}/changes/{change['id']}/approve", json={})
    assert own.status_code == 403 and own.headers["content-type"] == PROBLEM_JSON
    assert own.json()["code"] == "four_eyes_required"
    assert ("http-rules", 1) not in _active_rules(server)

    approved = second.post(f"{GOVERNANCE}/changes/{change['id']}/approve", json={"reason": "ok"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["decided_by"] == "user.second-admin"
    assert ("http-rules", 1) in _active_rules(server)
    again = second.post(f"{GOVERNANCE}/changes/{change['id']}/approve", json={})
    assert again.status_code == 409 and again.json()["code"] == "change_closed"


def test_the_refused_self_approval_is_in_the_audit_report(server: Server) -> None:
    change = _submit(server)
    with server.client() as admin:
        admin.post(f"{GOVERNANCE}/changes/{change['id']}/approve", json={})
    with server.client("auditor") as auditor:
        page = auditor.get("/api/v1/audit/report", params={"action": "governance.change.*"})
    assert page.status_code == 200, page.text
    [proposed, entry] = page.json()["items"]
    assert proposed["action"] == "governance.change.propose"
    assert (entry["user"], entry["outcome"]) == ("user.administrator", "denied")
    assert entry["detail"]["change_id"] == change["id"]


def test_a_rejection_without_a_reason_is_a_422_naming_the_field(
    server: Server, second: httpx.Client
) -> None:
    change = _submit(server)
    refused = second.post(f"{GOVERNANCE}/changes/{change['id']}/reject", json={"reason": ""})
    assert refused.status_code == 422
    assert refused.json()["errors"] == [{"field": "reason", "problem": "a reason is required"}]
    rejected = second.post(f"{GOVERNANCE}/changes/{change['id']}/reject", json={"reason": "no"})
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"


def test_roles_without_governance_rights_are_refused(server: Server) -> None:
    change = _submit(server)
    with server.client("intake_coordinator") as intake:
        assert intake.get(f"{GOVERNANCE}/changes").status_code == 403
        assert intake.get(f"{GOVERNANCE}/report").status_code == 403
    with server.client("clinic_manager") as manager:
        assert manager.get(f"{GOVERNANCE}/changes").status_code == 200
        decided = manager.post(f"{GOVERNANCE}/changes/{change['id']}/approve", json={})
        assert decided.status_code == 403 and decided.json()["code"] == "permission_denied"


def test_a_diff_and_a_rollback_over_http(server: Server, second: httpx.Client) -> None:
    for version in (1, 2):
        change = _submit(server, version)
        assert second.post(f"{GOVERNANCE}/changes/{change['id']}/approve", json={}).is_success
    with server.client("auditor") as auditor:
        diff = auditor.get(f"{GOVERNANCE}/diff/rules/http-rules", params={"from": 1, "to": 2})
    assert diff.status_code == 200
    assert "-version: 1\n+version: 2\n" in diff.json()["diff"]

    with server.client() as admin:
        rollback = admin.post(
            f"{GOVERNANCE}/changes",
            json={
                "kind": "rules",
                "key": "http-rules",
                "version": 1,
                "rollback": True,
                "reason": "v2 misfires",
            },
        )
    assert rollback.status_code == 201 and rollback.json()["purpose"] == "rollback"
    assert ("http-rules", 2) in _active_rules(server)
    assert second.post(f"{GOVERNANCE}/changes/{rollback.json()['id']}/approve", json={}).is_success
    assert ("http-rules", 1) in _active_rules(server)


def test_the_governance_report_comes_as_json_or_csv(server: Server) -> None:
    with server.client("auditor") as auditor:
        as_json = auditor.get(f"{GOVERNANCE}/report")
        as_csv = auditor.get(f"{GOVERNANCE}/report", params={"format": "csv"})
    assert as_json.status_code == 200
    labels = {(r["kind"], r["label"]) for r in as_json.json()["items"]}
    assert {("workflow", "human"), ("rules", "automated"), ("routing", "automated")} <= labels
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert len(rows) == len(as_json.json()["items"])
    assert rows[0]["approved_by"] == "system"


def test_the_audit_report_filters_sorts_pages_and_exports_csv(server: Server) -> None:
    with server.client("intake_coordinator") as intake:
        for mrn in ("MRN-1", "MRN-2", "MRN-3"):
            patient = {**referral_payload()["patient"], "mrn": mrn}  # type: ignore[dict-item]
            created = intake.post("/api/v1/referrals", json=referral_payload(patient=patient))
            assert created.status_code == 201, created.text
    params = {"from": START.isoformat(), "action": "case.create", "sort": "-patient", "limit": 2}
    with server.client("auditor") as auditor:
        first = auditor.get("/api/v1/audit/report", params=params)
        second_page = auditor.get("/api/v1/audit/report", params={**params, "offset": 2})
        exported = auditor.get("/api/v1/audit/report.csv", params=params)
        bad = auditor.get("/api/v1/audit/report", params={"sort": "mood", "limit": 0})
    assert [e["patient"] for e in first.json()["items"]] == ["MRN-3", "MRN-2"]
    assert (first.json()["total"], first.json()["next_offset"]) == (3, 2)
    assert [e["patient"] for e in second_page.json()["items"]] == ["MRN-1"]
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["patient"] for r in rows] == ["MRN-3", "MRN-2", "MRN-1"]
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["errors"]] == ["sort", "limit"]
    with server.client("referral_coordinator") as coordinator:
        assert coordinator.get("/api/v1/audit/report").status_code == 403
        assert coordinator.get("/api/v1/audit/report.csv").status_code == 403
