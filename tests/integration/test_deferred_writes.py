"""An optimistic unit of work defers its writes (adapters/db/write_buffer.py): reads in
the same transaction still see them, the commit writes them all, and a case saved by
someone else meanwhile fails the batch instead of being overwritten."""


import pytest

from careloop.adapters.db.audit_store import verify_audit_log
from careloop.bootstrap import App
from careloop.domain.errors import StaleVersion
from careloop.engine.actions import automation_actor
from careloop.services.attachments import record_task, task_values
from careloop.services.cases import apply_update, update_case
from careloop.services.ports import ManualClock, OptimisticAbort
from careloop.services.referral_input import validate_changes
from tests.conftest import INTAKE, new_case

ROBOT = automation_actor("deferred-test")


def test_deferred_writes_are_seen_by_later_reads_and_all_committed(
    app: App, clock: ManualClock
) -> None:
    case_id = new_case(app)
    now = clock.now()
    with app.deps.uow() as work:
        work.optimistic = True
        work.cases.prefetch({case_id})
        case = work.cases.get(case_id)
        # More tasks than one block of reserved ids: the second block must not reuse ids.
        ids = [
            record_task(work, ROBOT, case, task_values(f"task {n}", ROBOT, now), now)
            for n in range(130)
        ]
        apply_update(work, app.deps, ROBOT, case, validate_changes({"priority": "high"}), now)
        kept = work.cases.get(case_id)
        assert (kept.version, kept.open_tasks, kept.data["priority"]) == (2, 130, "high")
        # A read that names a deferred table writes what waits first.
        assert [t["id"] for t in work.cases.tasks(case_id)] == ids
        work.commit()
    assert len(set(ids)) == 130
    with app.deps.read_uow() as work:
        stored = work.cases.get(case_id)
        assert (stored.version, stored.open_tasks, stored.data["priority"]) == (2, 130, "high")
        actions = [entry["action"] for entry in work.audit.for_case(case_id)]
    assert actions.count("case.task.add") == 130 and actions.count("case.update") == 1
    assert all(result.ok for result in verify_audit_log(app.engine))


def test_a_stale_expected_version_is_refused_before_anything_is_deferred(
    app: App, clock: ManualClock
) -> None:
    case_id = new_case(app)
    with app.deps.uow() as work:
        work.optimistic = True
        case = work.cases.get(case_id)
        with pytest.raises(StaleVersion):
            work.cases.save(case, case.version + 1)


def test_a_rolled_back_optimistic_batch_leaves_nothing(app: App, clock: ManualClock) -> None:
    case_id = new_case(app)
    now = clock.now()
    with app.deps.uow() as work:
        work.optimistic = True
        case = work.cases.get(case_id)
        record_task(work, ROBOT, case, task_values("never", ROBOT, now), now)
        apply_update(work, app.deps, ROBOT, case, validate_changes({"priority": "high"}), now)
    with app.deps.read_uow() as work:
        assert work.cases.tasks(case_id) == []
        assert work.cases.get(case_id).version == 1


def test_a_case_saved_meanwhile_fails_the_deferred_save_and_writes_nothing(
    pg_app: App, clock: ManualClock
) -> None:
    # PostgreSQL only: on SQLite the batch holds the one write lock, so nobody can save
    # the case meanwhile.
    app = pg_app
    case_id = new_case(app)
    now = clock.now()
    with app.deps.uow() as work:
        work.optimistic = True
        case = work.cases.get(case_id)
        record_task(work, ROBOT, case, task_values("from the batch", ROBOT, now), now)
        apply_update(work, app.deps, ROBOT, case, validate_changes({"priority": "high"}), now)
        # A coordinator saves the same case and commits before the batch does.
        update_case(app.deps, INTAKE, case_id, 1, validate_changes({"priority": "critical"}))
        with pytest.raises(OptimisticAbort):
            work.commit()
    with app.deps.read_uow() as work:
        stored = work.cases.get(case_id)
        assert (stored.version, stored.data["priority"]) == (2, "critical")
        assert work.cases.tasks(case_id) == []
    assert all(result.ok for result in verify_audit_log(app.engine))
