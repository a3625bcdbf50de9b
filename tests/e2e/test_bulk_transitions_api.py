"""POST /api/v1/referrals/transitions: several referrals moved in one request, each
answered on its own."""

from tests.conftest import referral_payload
from tests.e2e.conftest import Clients

REFERRALS = "/api/v1/referrals"


def test_each_item_is_answered_with_its_referral_or_its_problem(api: Clients) -> None:
    intake = api("intake_coordinator")
    first, second = (intake.post(REFERRALS, json=referral_payload()).json() for _ in range(2))

    response = intake.post(
        f"{REFERRALS}/transitions",
        json={"items": [
            {"id": first["id"], "transition": "begin_review", "version": 1},
            {"id": second["id"], "transition": "begin_review", "version": 7},
        ]},
    )

    assert response.status_code == 200, response.text
    moved, stale = response.json()["results"]
    assert moved["status"] == 200 and moved["referral"]["state"] == "documentation_review"
    assert moved["referral"]["version"] == 2
    assert stale["status"] == 409
    assert stale["problem"]["code"] == "stale_version"
    assert stale["problem"]["current_version"] == 1
    assert stale["problem"]["instance"] == f"{REFERRALS}/{second['id']}/transitions"
    assert intake.get(f"{REFERRALS}/{second['id']}").json()["state"] == "intake_received"


def test_a_bad_batch_is_a_422_naming_the_field_and_moves_nothing(api: Clients) -> None:
    intake = api("intake_coordinator")
    case = intake.post(REFERRALS, json=referral_payload()).json()

    empty = intake.post(f"{REFERRALS}/transitions", json={"items": []})
    unknown = intake.post(
        f"{REFERRALS}/transitions",
        json={"items": [{"id": case["id"], "transition": "begin_review", "version": 1,
                         "colour": "red"}]},
    )
    too_many = intake.post(
        f"{REFERRALS}/transitions",
        json={"items": [{"id": case["id"], "transition": "begin_review", "version": 1}] * 201},
    )

    assert [r.status_code for r in (empty, unknown, too_many)] == [422, 422, 422]
    assert [e["field"] for e in empty.json()["errors"]] == ["items"]
    assert [e["field"] for e in unknown.json()["errors"]] == ["items.0.colour"]
    assert intake.get(f"{REFERRALS}/{case['id']}").json()["version"] == 1


def test_a_role_that_may_not_move_referrals_is_refused(api: Clients) -> None:
    case = api("intake_coordinator").post(REFERRALS, json=referral_payload()).json()

    response = api("auditor").post(
        f"{REFERRALS}/transitions",
        json={"items": [{"id": case["id"], "transition": "begin_review", "version": 1}]},
    )

    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
