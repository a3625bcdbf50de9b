"""The API describes itself and answers every error, even routing ones, as problem+json."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from careloop.domain.access import Role
from careloop.services.ports import ManualClock
from tests.conftest import START, make_app
from tests.e2e.conftest import Server, running_server

PROBLEM_JSON = "application/problem+json"


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Nothing here writes referrals, so the whole module shares one server."""
    app = make_app(f"sqlite:///{tmp_path_factory.mktemp('surface') / 'careloop.db'}",
                   ManualClock(START))
    with running_server(app, [Role.ADMINISTRATOR, Role.AUDITOR]) as running:
        yield running


@pytest.fixture
def anonymous(shared_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_server.base_url, timeout=10) as client:
        yield client


def test_openapi_document_lists_every_referral_operation(anonymous: httpx.Client) -> None:
    response = anonymous.get("/openapi.json")

    assert response.status_code == 200
    spec = response.json()
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] == "careloop"
    operations = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert {
        ("/api/v1/referrals", "get"),
        ("/api/v1/referrals", "post"),
        ("/api/v1/referrals/{case_id}", "get"),
        ("/api/v1/referrals/{case_id}", "patch"),
        ("/api/v1/referrals/{case_id}/transitions", "post"),
        ("/api/v1/referrals/{case_id}/assignment", "post"),
        ("/api/v1/referrals/{case_id}/history", "get"),
        ("/api/v1/referrals/{case_id}/audit", "get"),
        ("/api/v1/referrals/{case_id}/notes", "get"),
        ("/api/v1/referrals/{case_id}/notes", "post"),
        ("/api/v1/referrals/{case_id}/tasks", "get"),
        ("/api/v1/referrals/{case_id}/tasks", "post"),
        ("/api/v1/referrals/{case_id}/documents", "get"),
        ("/api/v1/referrals/{case_id}/documents", "post"),
        ("/api/v1/referrals/{case_id}/documents/{document_id}/content", "get"),
    } <= operations


def test_openapi_document_describes_the_create_request_and_idempotency_header(
        anonymous: httpx.Client) -> None:
    create = anonymous.get("/openapi.json").json()["paths"]["/api/v1/referrals"]["post"]

    assert "201" in create["responses"]
    assert "application/json" in create["requestBody"]["content"]
    assert "Idempotency-Key" in {p["name"] for p in create["parameters"]}


def test_interactive_docs_are_served_as_html(anonymous: httpx.Client) -> None:
    response = anonymous.get("/docs")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in response.text


def test_health_answers_without_a_token(anonymous: httpx.Client) -> None:
    response = anonymous.get("/api/v1/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_the_stored_referral_workflow_is_listed(shared_server: Server) -> None:
    with shared_server.client("auditor") as auditor:
        response = auditor.get("/api/v1/workflows")

    assert response.status_code == 200
    assert {(w["key"], w["version"], w["case_type"]) for w in response.json()["items"]} == {
        ("referral-standard", 1, "referral")}


def test_an_unknown_path_is_a_404_problem(anonymous: httpx.Client) -> None:
    response = anonymous.get("/api/v1/nowhere")

    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["code"] == "not_found"


def test_an_unsupported_method_is_a_405_problem(shared_server: Server) -> None:
    with shared_server.client("administrator") as admin:
        response = admin.delete("/api/v1/referrals")

    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["code"] == "method_not_allowed"


def test_a_non_numeric_case_id_is_a_422_naming_the_path_parameter(
        shared_server: Server) -> None:
    with shared_server.client("administrator") as admin:
        response = admin.get("/api/v1/referrals/abc")

    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    assert [e["field"] for e in response.json()["errors"]] == ["path.case_id"]
