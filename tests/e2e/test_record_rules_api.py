"""Record rules, field masking, break-glass and the audit of refusals over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from careloop.adapters.db.tables import audit_log
from careloop.domain.access import SYSTEM_ACTOR
from careloop.services import accounts
from careloop.services.ports import ManualClock
from tests.conftest import START, make_app, referral_payload
from tests.e2e.conftest import Server, running_server

REFERRALS = "/api/v1/referrals"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with staff at two clinics, plus the usual one user per role everywhere."""
    folder = tmp_path_factory.mktemp("record_rules")
    app = make_app(f"sqlite:///{folder / 'careloop.db'}", ManualClock(START))
    with running_server(app) as server:
        for username, role, clinic in (("nina.north", "referral_coordinator", "North Clinic"),
                                       ("sam.south", "clinical_triage", "South Clinic"),
                                       ("fred.finance", "finance", "North Clinic"),
                                       ("sue.scheduler", "scheduler", "North Clinic")):
            accounts.add_user(app.deps, SYSTEM_ACTOR, app.hashing, username, username, [role],
                              None, locations=[clinic])
            server.tokens[username] = accounts.create_token(
                app.deps, SYSTEM_ACTOR, username, "test", timedelta(days=1))
        yield server


def client(site: Server, who: str) -> httpx.Client:
    return site.client(who)


@pytest.fixture
def north_case(site: Server) -> int:
    with client(site, "nina.north") as nina:
        response = nina.post(REFERRALS, json=referral_payload(clinic="North Clinic"))
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def test_a_case_at_another_clinic_answers_exactly_like_a_missing_one(
        site: Server, north_case: int) -> None:
    with client(site, "sam.south") as sam:
        hidden = sam.get(f"{REFERRALS}/{north_case}")
        missing = sam.get(f"{REFERRALS}/99999999")
        listed = sam.get(REFERRALS, params={"limit": 200}).json()["items"]

    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["code"] == missing.json()["code"] == "not_found"
    assert north_case not in {row["id"] for row in listed}


def test_finance_gets_the_referral_without_clinical_content_and_with_a_masked_mrn(
        site: Server, north_case: int) -> None:
    with client(site, "fred.finance") as fred:
        body = fred.get(f"{REFERRALS}/{north_case}").json()

    mrn = referral_payload()["patient"]["mrn"]  # type: ignore[index]
    assert body["referral"]["reason"] is None and body["referral"]["diagnoses"] is None
    assert body["referral"]["patient"]["mrn"] == "****" + str(mrn)[-4:]
    patient = referral_payload()["patient"]
    assert body["referral"]["patient"]["member_id"] == patient["member_id"]  # type: ignore[index]
    assert {"reason", "diagnoses", "patient.mrn"} <= set(body["masked_fields"])


def test_a_scheduler_sees_the_reason_but_identifiers_only_by_their_last_four(
        site: Server, north_case: int) -> None:
    with client(site, "sue.scheduler") as sue:
        body = sue.get(f"{REFERRALS}/{north_case}").json()

    assert body["referral"]["reason"] == referral_payload()["reason"]
    assert body["referral"]["patient"]["mrn"].startswith("****")


def test_break_glass_over_http_opens_the_case_and_puts_the_reason_on_record(
        site: Server, north_case: int) -> None:
    with client(site, "sam.south") as sam:
        granted = sam.post(f"{REFERRALS}/{north_case}/break-glass",
                           json={"reason": "Unconscious patient in the South ED", "minutes": 10})
        read = sam.get(f"{REFERRALS}/{north_case}")
    with client(site, "auditor") as auditor:
        grants = auditor.get("/api/v1/access/break-glass").json()["items"]

    assert granted.status_code == 201, granted.text
    assert read.status_code == 200
    assert any(g["case_id"] == north_case and g["username"] == "sam.south" for g in grants)


def test_every_refusal_is_audited_with_who_what_and_why(site: Server, north_case: int) -> None:
    with client(site, "sam.south") as sam:
        sam.get(f"{REFERRALS}/{north_case}/history")
    with client(site, "fred.finance") as fred:
        fred.post(REFERRALS, json=referral_payload())
    with httpx.Client(base_url=site.base_url, headers={"Authorization": "Bearer clp_forged"}) as x:
        assert x.get(REFERRALS).status_code == 401

    with site.app.engine.connect() as connection:
        denied = connection.execute(
            select(audit_log.c.actor_name, audit_log.c.action, audit_log.c.case_id,
                   audit_log.c.detail).where(audit_log.c.outcome == "denied")).all()
    seen = {(row.actor_name, row.action, row.case_id) for row in denied}
    assert ("sam.south", "refused GET /api/v1/referrals/{case_id}/history", north_case) in seen
    assert ("fred.finance", "refused POST /api/v1/referrals", None) in seen
    assert ("anonymous", "refused GET /api/v1/referrals", None) in seen
    assert any("permission_denied" in row.detail for row in denied)


def test_a_bulk_move_of_a_case_out_of_reach_is_answered_as_missing_and_audited(
        site: Server, north_case: int) -> None:
    with client(site, "sam.south") as sam:
        response = sam.post(f"{REFERRALS}/transitions", json={"items": [
            {"id": north_case, "transition": "begin_review", "version": 1}]})

    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert (result["status"], result["problem"]["code"]) == (404, "not_found")
    with site.app.engine.connect() as connection:
        denied = connection.execute(
            select(audit_log.c.action, audit_log.c.detail).where(
                audit_log.c.outcome == "denied", audit_log.c.actor_name == "sam.south",
                audit_log.c.case_id == north_case)).all()
    assert [row.action for row in denied] == ["refused POST /api/v1/referrals/transitions"]
    assert "not_found" in denied[0].detail
    with client(site, "nina.north") as nina:
        assert nina.get(f"{REFERRALS}/{north_case}").json()["version"] == 1
