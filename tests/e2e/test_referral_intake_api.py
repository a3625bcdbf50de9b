"""Creating and reading referrals over HTTP: Location, idempotency, and input validation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from careloop.services.ports import ManualClock
from tests.conftest import referral_payload
from tests.e2e.conftest import Clients, Server, case_count

REFERRALS = "/api/v1/referrals"
PROBLEM_JSON = "application/problem+json"


def problem_fields(response: httpx.Response) -> set[str]:
    return {error["field"] for error in response.json().get("errors", [])}


def with_patient(**changes: object) -> dict[str, Any]:
    patient: dict[str, Any] = referral_payload()["patient"]  # type: ignore[assignment]
    return referral_payload(patient={**patient, **changes})


def with_provider(**changes: object) -> dict[str, Any]:
    provider: dict[str, Any] = referral_payload()["referring_provider"]  # type: ignore[assignment]
    return referral_payload(referring_provider={**provider, **changes})


# --- create and get ---------------------------------------------------------------------


def test_creating_a_referral_returns_201_with_location_of_the_new_case(
        api: Clients, shared_clock: ManualClock) -> None:
    response = api("intake_coordinator").post(REFERRALS, json=referral_payload())

    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["Location"] == f"{REFERRALS}/{body['id']}"
    assert "Idempotent-Replayed" not in response.headers
    assert body["state"] == "intake_received"
    assert body["version"] == 1
    assert body["workflow"] == {"key": "referral-standard", "version": 1}
    assert body["fhir"] == {"task_status": "received", "business_status": "intake-received",
                            "service_request_status": "active"}
    assert body["allowed_transitions"] == ["begin_review", "cancel"]
    assert datetime.fromisoformat(body["created_at"]) == shared_clock.now()
    # Urgent referrals must leave intake within 4 business hours of the clinic's calendar
    # (08:00-17:00 New York): received Monday 09:00 UTC, before it opens at 13:00 UTC;
    # the SLA breach step is due then too (tests/integration/test_automation_rules.py).
    assert shared_clock.now() == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert datetime.fromisoformat(body["sla_due_at"]) == datetime(2026, 3, 2, 17, 0, tzinfo=UTC)
    assert body["referral"]["patient"]["family_name"] == "Okafor"
    assert body["referral"]["diagnoses"] == ["R07.9", "I10"]


def test_the_location_of_a_created_referral_serves_the_same_case(api: Clients) -> None:
    intake = api("intake_coordinator")
    created = intake.post(REFERRALS, json=referral_payload())

    fetched = intake.get(created.headers["Location"])

    assert fetched.status_code == 200
    assert fetched.json() == created.json()


def test_lowercase_icd10_codes_are_stored_in_canonical_upper_case(api: Clients) -> None:
    response = api("intake_coordinator").post(
        REFERRALS, json=referral_payload(diagnoses=["r07.9", "e11.9"]))

    assert response.status_code == 201, response.text
    assert response.json()["referral"]["diagnoses"] == ["R07.9", "E11.9"]


def test_getting_an_unknown_referral_is_a_404_problem(api: Clients) -> None:
    response = api("intake_coordinator").get(f"{REFERRALS}/999999")

    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["code"] == "not_found"
    assert response.json()["instance"] == f"{REFERRALS}/999999"


# --- idempotency ------------------------------------------------------------------------


def test_replaying_an_idempotency_key_with_the_same_body_returns_the_first_case(
        api: Clients) -> None:
    intake = api("intake_coordinator")
    headers = {"Idempotency-Key": "fax-2026-03-02-0001"}
    before = case_count(api)

    first = intake.post(REFERRALS, json=referral_payload(), headers=headers)
    replay = intake.post(REFERRALS, json=referral_payload(), headers=headers)

    assert first.status_code == 201, first.text
    assert replay.status_code == 201, replay.text
    assert replay.json()["id"] == first.json()["id"]
    assert replay.headers["Location"] == first.headers["Location"]
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert case_count(api) == before + 1


def test_an_idempotent_replay_with_fields_in_another_order_is_the_same_request(
        api: Clients) -> None:
    intake = api("intake_coordinator")
    headers = {"Idempotency-Key": "portal-7781", "Content-Type": "application/json"}
    payload = referral_payload()
    reordered = dict(reversed(list(payload.items())))
    before = case_count(api)

    first = intake.post(REFERRALS, content=json.dumps(payload), headers=headers)
    replay = intake.post(REFERRALS, content=json.dumps(reordered), headers=headers)

    assert replay.status_code == 201, replay.text
    assert replay.json()["id"] == first.json()["id"]
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert case_count(api) == before + 1


def test_reusing_an_idempotency_key_with_a_different_body_is_a_409_conflict(
        api: Clients) -> None:
    intake = api("intake_coordinator")
    headers = {"Idempotency-Key": "fax-2026-03-02-0002"}
    intake.post(REFERRALS, json=referral_payload(), headers=headers)
    before = case_count(api)

    response = intake.post(REFERRALS, json=referral_payload(urgency="routine"), headers=headers)

    assert response.status_code == 409
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["code"] == "idempotency_key_reused"
    assert case_count(api) == before


def test_idempotency_keys_are_scoped_to_the_user_who_sent_them(api: Clients) -> None:
    headers = {"Idempotency-Key": "shared-key-1"}
    before = case_count(api)

    mine = api("intake_coordinator").post(REFERRALS, json=referral_payload(), headers=headers)
    theirs = api("referral_coordinator").post(REFERRALS, json=referral_payload(),
                                              headers=headers)

    assert mine.status_code == theirs.status_code == 201
    assert theirs.json()["id"] != mine.json()["id"]
    assert "Idempotent-Replayed" not in theirs.headers
    assert case_count(api) == before + 2


def test_concurrent_requests_with_one_idempotency_key_create_exactly_one_case(
        shared_server: Server, api: Clients) -> None:
    before = case_count(api)

    def send(_: int) -> httpx.Response:
        with shared_server.client("intake_coordinator") as client:
            return client.post(REFERRALS, json=referral_payload(),
                               headers={"Idempotency-Key": "burst-1"})

    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(send, range(6)))

    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum("Idempotent-Replayed" not in r.headers for r in responses) == 1
    assert case_count(api) == before + 1


def test_an_overlong_idempotency_key_is_a_422_naming_the_header(api: Clients) -> None:
    before = case_count(api)

    response = api("intake_coordinator").post(REFERRALS, json=referral_payload(),
                                              headers={"Idempotency-Key": "k" * 201})

    assert response.status_code == 422
    assert problem_fields(response) == {"header.Idempotency-Key"}
    assert case_count(api) == before


def test_without_an_idempotency_key_each_post_creates_a_new_case(api: Clients) -> None:
    intake = api("intake_coordinator")
    before = case_count(api)

    first = intake.post(REFERRALS, json=referral_payload())
    second = intake.post(REFERRALS, json=referral_payload())

    assert first.json()["id"] != second.json()["id"]
    assert case_count(api) == before + 2


# --- bad input: the problem names the field and nothing is written ----------------------


def test_malformed_json_is_a_400_problem_and_creates_nothing(api: Clients) -> None:
    before = case_count(api)

    response = api("intake_coordinator").post(
        REFERRALS, content=b'{"patient": {"family_name": "Okafor",',
        headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["code"] == "malformed_json"
    assert problem_fields(response) == {"body"}
    assert case_count(api) == before


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        pytest.param(referral_payload(severity="high"), {"severity"}, id="unknown-field"),
        pytest.param(with_patient(nickname="Addy"), {"patient.nickname"},
                     id="unknown-nested-field"),
        pytest.param(referral_payload(urgency=5, diagnoses="R07.9", patient="Okafor"),
                     {"urgency", "diagnoses", "patient"}, id="wrong-types"),
        pytest.param(with_patient(birth_date="2023-02-30"), {"patient.birth_date"},
                     id="impossible-date"),
        pytest.param(with_patient(birth_date="2999-01-01"), {"patient.birth_date"},
                     id="future-birth-date"),
        pytest.param(with_provider(npi="1234567890"), {"referring_provider.npi"},
                     id="npi-failing-luhn"),
        pytest.param(with_provider(npi="12345"), {"referring_provider.npi"},
                     id="npi-too-short"),
        pytest.param(referral_payload(diagnoses=["R07.9", "chest pain"]), {"diagnoses.1"},
                     id="bad-icd10"),
        pytest.param(referral_payload(specialty="astrology"), {"specialty"},
                     id="unknown-specialty"),
        pytest.param({k: v for k, v in referral_payload().items() if k != "reason"},
                     {"reason"}, id="missing-required-field"),
    ],
)
def test_invalid_referral_is_a_422_naming_each_bad_field_and_creates_nothing(
        api: Clients, payload: dict[str, Any], fields: set[str]) -> None:
    intake = api("intake_coordinator")
    before = case_count(api)

    response = intake.post(REFERRALS, json=payload)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["code"] == "invalid_input"
    assert problem_fields(response) == fields
    assert case_count(api) == before


def test_a_future_birth_date_is_explained_as_being_in_the_future(api: Clients) -> None:
    response = api("intake_coordinator").post(REFERRALS,
                                              json=with_patient(birth_date="2999-01-01"))

    [error] = response.json()["errors"]
    assert "future" in error["problem"]


def test_an_oversized_json_body_is_refused_with_413_and_creates_nothing(api: Clients) -> None:
    payload = referral_payload(reason="x" * 1_100_000)
    before = case_count(api)

    response = api("intake_coordinator").post(REFERRALS, json=payload)

    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["code"] == "payload_too_large"
    assert case_count(api) == before


def test_an_oversized_json_body_sent_without_content_length_is_refused_with_413(
        api: Clients) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"reason": "'
        for _ in range(12):
            yield b"x" * 100_000
        yield b'"}'
    before = case_count(api)

    response = api("intake_coordinator").post(
        REFERRALS, content=chunks(), headers={"Content-Type": "application/json"})

    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "payload_too_large"
    assert case_count(api) == before


def test_a_nul_character_in_any_text_is_a_422_naming_the_field(api: Clients) -> None:
    before = case_count(api)
    body = with_patient(family_name="Oka\u0000for")
    body["reason"] = "Chest\u0000pain"

    response = api("intake_coordinator").post(REFERRALS, json=body)

    assert response.status_code == 422
    assert problem_fields(response) == {"reason", "patient.family_name"}
    assert case_count(api) == before
