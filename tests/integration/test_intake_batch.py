"""Group commit of referral intake: create_referrals writes several referrals in one
transaction, each request standing alone, and the API's IntakeBatcher gathers concurrent
creates into such batches."""

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import text

from careloop.adapters.db.audit_store import verify_audit_log
from careloop.api import intake_batcher
from careloop.api.blocking import BlockingPool
from careloop.api.intake_batcher import IntakeBatcher
from careloop.bootstrap import App
from careloop.domain.errors import IdempotencyConflict, PermissionDenied
from careloop.services import cases
from careloop.services.cases import IntakeRequest, create_referrals
from careloop.services.referral_input import validate_referral
from tests.conftest import AUDITOR, INTAKE, referral_payload


def _request(key: str | None = None, reason: str = "Chest pain", **kw: Any) -> IntakeRequest:
    actor = kw.pop("actor", INTAKE)
    return IntakeRequest(actor, validate_referral(referral_payload(reason=reason)), key)


def _count(app: App, table: str, where: str = "") -> int:
    with app.engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table} {where}")).scalar_one())


def test_each_request_in_a_batch_stands_alone(app: App) -> None:
    results = create_referrals(
        app.deps,
        [
            _request("k-1"),
            _request(actor=AUDITOR),  # may read, may not create
            _request("k-1", reason="Another body under the same key"),
            _request("k-1"),  # the same body again: the first case, replayed
            _request(),
        ],
    )

    first, refused, conflict, replay, last = results
    assert isinstance(first, tuple) and first[1] is True
    assert isinstance(refused, PermissionDenied)
    assert isinstance(conflict, IdempotencyConflict)
    assert isinstance(replay, tuple) and (replay[0].id, replay[1]) == (first[0].id, False)
    assert isinstance(last, tuple) and last[1] is True
    created = {first[0].id, last[0].id}
    assert _count(app, "cases") == 2
    assert _count(app, "outbox", "WHERE event_type = 'case.created'") == 2
    assert _count(app, "audit_log", "WHERE action = 'case.create'") == 2
    with app.deps.read_uow() as work:
        assert {work.cases.get(i).id for i in created} == created
    assert all(result.ok for result in verify_audit_log(app.engine))


def test_a_request_failing_after_its_first_writes_leaves_none_of_them(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_publish = cases.publish_events

    def publish_failing_one(uow: Any, case: Any, now: Any) -> None:
        if case.data["reason"] == "Fails late":  # after its case, history and audit entry
            raise RuntimeError("outbox unavailable")
        real_publish(uow, case, now)

    monkeypatch.setattr(cases, "publish_events", publish_failing_one)

    results = create_referrals(
        app.deps, [_request(), _request(reason="Fails late"), _request()]
    )

    assert [type(r).__name__ for r in results] == ["tuple", "RuntimeError", "tuple"]
    assert _count(app, "cases") == 2
    assert _count(app, "case_history") == 2
    assert _count(app, "audit_log", "WHERE action = 'case.create'") == 2
    assert _count(app, "outbox") == 2
    assert all(result.ok for result in verify_audit_log(app.engine))


def test_concurrent_creates_share_batches_and_each_gets_its_own_case(
    sqlite_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []

    def recorded(deps: Any, requests: Sequence[IntakeRequest]) -> list[Any]:
        sizes.append(len(requests))
        return create_referrals(deps, requests)

    monkeypatch.setattr(intake_batcher, "create_referrals", recorded)
    blocking = BlockingPool(threads=2)
    batcher = IntakeBatcher(sqlite_app.deps, blocking, max_batch=4)

    async def burst() -> list[Any]:
        return await asyncio.gather(
            *(batcher.create(_request(f"key-{n}")) for n in range(10)),
            batcher.create(_request(actor=AUDITOR)),
            return_exceptions=True,
        )

    try:
        results = asyncio.run(burst())
    finally:
        blocking.shutdown()

    *created, refused = results
    assert isinstance(refused, PermissionDenied)
    assert len({case.id for case, new in created if new}) == 10
    # All eleven are queued before the writer first runs: batches of at most four.
    assert sizes == [4, 4, 3]
    assert _count(sqlite_app, "cases") == 10


def test_a_failed_commit_fails_every_request_of_its_batch(
    sqlite_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(deps: Any, requests: Sequence[IntakeRequest]) -> list[Any]:
        raise OSError("disk full")

    monkeypatch.setattr(intake_batcher, "create_referrals", failing)
    blocking = BlockingPool(threads=2)
    batcher = IntakeBatcher(sqlite_app.deps, blocking)

    async def burst() -> list[Any]:
        return await asyncio.gather(
            *(batcher.create(_request()) for _ in range(3)), return_exceptions=True
        )

    try:
        results = asyncio.run(burst())
    finally:
        blocking.shutdown()

    assert [str(r) for r in results] == ["disk full"] * 3
    assert _count(sqlite_app, "cases") == 0


def test_a_batch_of_one_is_answered_like_a_single_create(app: App) -> None:
    (refused,) = create_referrals(app.deps, [_request(actor=AUDITOR)])
    (created,) = create_referrals(app.deps, [_request("one")])
    (replayed,) = create_referrals(app.deps, [_request("one")])

    assert isinstance(refused, PermissionDenied)
    assert isinstance(created, tuple) and created[1] is True
    assert isinstance(replayed, tuple) and (replayed[0].id, replayed[1]) == (created[0].id, False)
    assert _count(app, "cases") == 1


def test_a_clean_batch_is_written_in_one_pass_without_savepoints(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    passes: list[bool] = []
    real = cases._run_each

    def spied(deps: Any, items: Any, step: Any, prepare: Any, optimistic: bool) -> Any:
        passes.append(optimistic)
        return real(deps, items, step, prepare, optimistic)

    monkeypatch.setattr(cases, "_run_each", spied)

    clean = create_referrals(app.deps, [_request("a"), _request("b")])
    mixed = create_referrals(app.deps, [_request("c"), _request(actor=AUDITOR)])

    assert all(isinstance(r, tuple) for r in clean)
    assert isinstance(mixed[1], PermissionDenied)
    # The clean batch: one optimistic pass. The mixed one: rolled back, then careful.
    assert passes == [True, True, False]
    assert _count(app, "cases") == 3


def test_a_create_whose_client_went_away_before_its_batch_is_not_written(
    sqlite_app: App,
) -> None:
    blocking = BlockingPool(threads=2)
    batcher = IntakeBatcher(sqlite_app.deps, blocking, max_batch=1)

    async def first_kept_second_abandoned() -> list[Any]:
        kept = asyncio.ensure_future(batcher.create(_request("kept")))
        gone = asyncio.ensure_future(batcher.create(_request("gone")))
        await asyncio.sleep(0)  # both queued; the writer has taken only the first
        gone.cancel()
        return await asyncio.gather(kept, gone, return_exceptions=True)

    try:
        kept, gone = asyncio.run(first_kept_second_abandoned())
    finally:
        blocking.shutdown()

    assert isinstance(kept, tuple) and kept[1] is True
    assert isinstance(gone, asyncio.CancelledError)
    assert _count(sqlite_app, "cases") == 1
