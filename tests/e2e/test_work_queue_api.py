"""The work queue over HTTP: filters, free-text search, age filters and cursor pagination."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from careloop.domain.access import SYSTEM_ACTOR, Role
from careloop.services import accounts
from careloop.services.ports import ManualClock
from tests.conftest import START, make_app, referral_payload
from tests.e2e.conftest import Server, start_server

REFERRALS = "/api/v1/referrals"


@pytest.fixture
def admin(server: Server) -> Iterator[httpx.Client]:
    with server.client("administrator") as client:
        yield client


def create(client: httpx.Client, **overrides: object) -> int:
    response = client.post(REFERRALS, json=referral_payload(**overrides))
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def listed_ids(client: httpx.Client, **params: Any) -> list[int]:
    response = client.get(REFERRALS, params=params)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def walk(client: httpx.Client, **params: Any) -> list[list[int]]:
    """Every page of a listing, following next_cursor until it runs out."""
    pages: list[list[int]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get(REFERRALS, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([item["id"] for item in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not terminate"


def build_queue(admin: httpx.Client, clock: ManualClock) -> dict[str, int]:
    """Three referrals created three hours apart, one moved on and one assigned.

    okafor   09:00  cardiology   urgent    riverside-clinic  Blue Harbor Health
    nguyen   12:00  dermatology  routine   harbor-clinic     Coastal Mutual     in review
    schmidt  15:00  cardiology   emergent  harbor-clinic     (no payer)         assigned
    """
    okafor = create(admin)
    clock.advance(hours=3)
    nguyen = create(
        admin, specialty="dermatology", urgency="routine", clinic="harbor-clinic",
        reason="Changing mole on upper back",
        patient={"family_name": "Nguyen", "given_name": "Bao", "birth_date": "1990-07-01",
                 "mrn": "MRN200777"},
        payer={"name": "Coastal Mutual", "member_id": "CM889900"},
    )
    clock.advance(hours=3)
    schmidt = create(
        admin, urgency="emergent", clinic="harbor-clinic", reason="Recurrent syncope",
        patient={"family_name": "Schmidt", "given_name": "Jonas", "birth_date": "1948-11-30"},
        payer=None,
    )
    moved = admin.post(f"{REFERRALS}/{nguyen}/transitions",
                       json={"transition": "begin_review", "version": 1})
    assert moved.status_code == 200, moved.text
    assigned = admin.post(f"{REFERRALS}/{schmidt}/assignment",
                          json={"version": 1, "assignee": "cora.coordinator"})
    assert assigned.status_code == 200, assigned.text
    return {"okafor": okafor, "nguyen": nguyen, "schmidt": schmidt}


@pytest.fixture(scope="module")
def queue_clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture(scope="module")
def queue_server(tmp_path_factory: pytest.TempPathFactory,
                 queue_clock: ManualClock) -> Iterator[Server]:
    """A server holding only the three-referral queue; the tests using it only read."""
    app = make_app(f"sqlite:///{tmp_path_factory.mktemp('queue') / 'careloop.db'}",
                   queue_clock)
    accounts.add_user(app.deps, SYSTEM_ACTOR, app.hashing, "user.administrator", "Admin",
                      [Role.ADMINISTRATOR.value], None)
    token = accounts.create_token(app.deps, SYSTEM_ACTOR, "user.administrator", "test",
                                  timedelta(days=1))
    uv, thread, base_url = start_server(app)
    yield Server(base_url, app, {Role.ADMINISTRATOR.value: token})
    uv.should_exit = True
    thread.join(timeout=10)
    app.engine.dispose()


@pytest.fixture(scope="module")
def queue(queue_server: Server, queue_clock: ManualClock) -> dict[str, int]:
    with queue_server.client() as admin:
        return build_queue(admin, queue_clock)


@pytest.fixture
def reader(queue_server: Server) -> Iterator[httpx.Client]:
    with queue_server.client() as client:
        yield client


def test_listing_without_filters_returns_every_referral_oldest_first(
        reader: httpx.Client, queue: dict[str, int]) -> None:
    response = reader.get(REFERRALS)

    assert response.status_code == 200
    body = response.json()
    assert [item["id"] for item in body["items"]] == [
        queue["okafor"], queue["nguyen"], queue["schmidt"]]
    assert body["next_cursor"] is None
    first = body["items"][0]
    assert first["state"] == "intake_received"
    assert first["specialty"] == "cardiology"
    assert first["payer"] == "Blue Harbor Health"
    assert first["patient_ref"] == "MRN100234"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param({"status": "documentation_review"}, ["nguyen"], id="status"),
        pytest.param({"status": ["intake_received", "documentation_review"]},
                     ["okafor", "nguyen", "schmidt"], id="several-statuses"),
        pytest.param({"status": "completed"}, [], id="status-with-no-cases"),
        pytest.param({"specialty": "cardiology"}, ["okafor", "schmidt"], id="specialty"),
        pytest.param({"urgency": "emergent"}, ["schmidt"], id="urgency"),
        pytest.param({"clinic": "harbor-clinic"}, ["nguyen", "schmidt"], id="clinic"),
        pytest.param({"payer": "Coastal Mutual"}, ["nguyen"], id="payer"),
        pytest.param({"assignee": "cora.coordinator"}, ["schmidt"], id="assignee"),
        pytest.param({"specialty": "cardiology", "clinic": "harbor-clinic"}, ["schmidt"],
                     id="filters-combine-with-and"),
    ],
)
def test_work_queue_filters_select_matching_referrals(
        reader: httpx.Client, queue: dict[str, int], params: dict[str, Any],
        expected: list[str]) -> None:
    assert listed_ids(reader, **params) == [queue[name] for name in expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("mole", ["nguyen"], id="word-in-reason"),
        pytest.param("OKAFOR", ["okafor"], id="family-name-any-case"),
        pytest.param("MRN200777", ["nguyen"], id="mrn"),
        pytest.param("okafor chest", ["okafor"], id="every-word-must-match"),
        pytest.param("nguyen syncope", [], id="words-from-different-cases"),
        pytest.param("harbor", ["nguyen", "schmidt"], id="word-in-clinic"),
        pytest.param("rossi", ["okafor", "nguyen", "schmidt"], id="referring-provider"),
        pytest.param("%", [], id="percent-is-literal"),
        pytest.param("_", [], id="underscore-is-literal"),
    ],
)
def test_free_text_search_matches_every_word_case_insensitively(
        reader: httpx.Client, queue: dict[str, int], text: str, expected: list[str]) -> None:
    assert listed_ids(reader, q=text) == [queue[name] for name in expected]


def test_age_filters_use_the_application_clock(
        admin: httpx.Client, clock: ManualClock) -> None:
    queue = build_queue(admin, clock)
    # now is 15:00: okafor is 6 hours old, nguyen 3 hours, schmidt brand new
    assert listed_ids(admin, min_age_hours=4) == [queue["okafor"]]
    assert listed_ids(admin, min_age_hours=2) == [queue["okafor"], queue["nguyen"]]
    assert listed_ids(admin, max_age_hours=4) == [queue["nguyen"], queue["schmidt"]]
    assert listed_ids(admin, min_age_hours=1, max_age_hours=4) == [queue["nguyen"]]

    clock.advance(hours=2)

    assert listed_ids(admin, min_age_hours=4) == [queue["okafor"], queue["nguyen"]]


def test_cursor_pagination_walks_every_referral_once_oldest_first(
        admin: httpx.Client, clock: ManualClock) -> None:
    ids = []
    for index in range(8):
        ids.append(create(admin, reason=f"Referral number {index}"))
        if index % 3 == 2:  # some share a creation time, so ties must break on id
            clock.advance(minutes=10)

    pages = walk(admin, limit=3)

    assert [len(page) for page in pages] == [3, 3, 2]
    flat = [case_id for page in pages for case_id in page]
    assert len(set(flat)) == len(flat), "a referral appeared on two pages"
    assert flat == ids


def test_newest_first_pagination_walks_every_referral_once_in_reverse(
        admin: httpx.Client, clock: ManualClock) -> None:
    ids = []
    for index in range(7):
        ids.append(create(admin, reason=f"Referral number {index}"))
        if index % 2 == 1:
            clock.advance(minutes=5)

    pages = walk(admin, limit=2, order="newest")

    assert [len(page) for page in pages] == [2, 2, 2, 1]
    assert [case_id for page in pages for case_id in page] == list(reversed(ids))


def test_pagination_keeps_the_filter_on_every_page(admin: httpx.Client) -> None:
    cardiology = []
    for index in range(6):
        specialty = "cardiology" if index % 2 == 0 else "neurology"
        case_id = create(admin, specialty=specialty)
        if specialty == "cardiology":
            cardiology.append(case_id)

    pages = walk(admin, limit=2, specialty="cardiology")

    assert [case_id for page in pages for case_id in page] == cardiology


def test_a_referral_created_while_paging_appears_on_a_later_page(
        admin: httpx.Client, clock: ManualClock) -> None:
    ids = [create(admin) for _ in range(3)]
    first = admin.get(REFERRALS, params={"limit": 2}).json()
    clock.advance(minutes=1)
    ids.append(create(admin))

    rest = walk(admin, limit=2, cursor=first["next_cursor"])

    seen = [item["id"] for item in first["items"]] + [i for page in rest for i in page]
    assert seen == ids


def test_a_cursor_not_issued_by_the_api_is_a_422_naming_the_cursor(
        reader: httpx.Client, queue: dict[str, int]) -> None:
    response = reader.get(REFERRALS, params={"cursor": "not-a-cursor"})

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_input"
    assert [e["field"] for e in response.json()["errors"]] == ["cursor"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        pytest.param({"limit": 0}, "query.limit", id="limit-zero"),
        pytest.param({"limit": 201}, "query.limit", id="limit-too-large"),
        pytest.param({"order": "sideways"}, "query.order", id="unknown-order"),
        pytest.param({"min_age_hours": -1}, "query.min_age_hours", id="negative-age"),
        pytest.param({"q": "x" * 201}, "query.q", id="search-too-long"),
    ],
)
def test_bad_list_parameters_are_a_422_naming_the_parameter(
        reader: httpx.Client, params: dict[str, Any], field: str) -> None:
    response = reader.get(REFERRALS, params=params)

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == [field]


def test_listed_times_are_utc_instants(admin: httpx.Client, clock: ManualClock) -> None:
    create(admin)

    [item] = admin.get(REFERRALS).json()["items"]

    assert datetime.fromisoformat(item["created_at"]) == clock.now()
