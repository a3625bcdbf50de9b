"""Work-queue search with cursor pagination, on both databases."""

from careloop.adapters.db.cases import CaseFilter
from careloop.bootstrap import App
from careloop.services import queries
from careloop.services.cases import create_referral
from careloop.services.ports import ManualClock
from careloop.services.referral_input import validate_referral
from tests.conftest import ADMIN, INTAKE, referral_payload


def _walk(app: App, flt: CaseFilter, limit: int) -> list[int]:
    seen: list[int] = []
    cursor = None
    while True:
        rows, cursor = queries.list_cases(app.deps, ADMIN, flt, limit, cursor)
        seen += [r["id"] for r in rows]
        if cursor is None:
            return seen


def test_cursor_pages_cover_the_queue_once_in_both_orders(app: App, clock: ManualClock) -> None:
    ids = []
    for i in range(11):
        clinic = "riverside-clinic" if i % 3 else "northgate-health"
        case, _ = create_referral(app.deps, INTAKE, validate_referral(
            referral_payload(clinic=clinic)))
        ids.append((case.id, clinic))
        if i % 4:  # some referrals share a creation time: the id breaks the tie
            clock.advance(minutes=7)
    riverside = [case_id for case_id, clinic in ids if clinic == "riverside-clinic"]
    flt = CaseFilter(states=("intake_received",), clinic="riverside-clinic",
                     specialty="cardiology")
    assert _walk(app, flt, 3) == riverside
    newest = CaseFilter(states=("intake_received",), clinic="riverside-clinic",
                        specialty="cardiology", newest_first=True)
    assert _walk(app, newest, 2) == list(reversed(riverside))
    assert _walk(app, CaseFilter(), 4) == [case_id for case_id, _ in ids]
