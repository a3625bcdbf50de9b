"""Automation rules on real SQLite and PostgreSQL: they fire once, explain themselves,
stop runaway chains, and a bad rule set never replaces the active one."""

from typing import Any

import pytest
from sqlalchemy import func, select

from careloop.adapters.db.automation_tables import automation_runs
from careloop.bootstrap import App
from careloop.domain.errors import DefinitionInvalid
from careloop.engine.worker import Worker
from careloop.services import automation_admin as admin
from careloop.services.cases import create_referral, transition_case, update_case
from careloop.services.ports import ManualClock
from careloop.services.referral_input import ReferralChanges, validate_referral
from tests.conftest import ADMIN, INTAKE, referral_payload
from tests.support.governance import store_rules


def _create(app: App, **overrides: Any) -> int:
    case, _ = create_referral(app.deps, INTAKE, validate_referral(referral_payload(**overrides)))
    return case.id


def _runs(app: App, case_id: int) -> list[dict[str, Any]]:
    with app.deps.read_uow() as work:
        return work.automation.runs_for_case(case_id)


def _version(app: App, case_id: int) -> int:
    with app.deps.read_uow() as work:
        return work.cases.get(case_id).version


def _tasks(app: App, case_id: int) -> list[str]:
    with app.deps.read_uow() as work:
        return [t["title"] for t in work.cases.tasks(case_id)]


def test_a_new_referral_is_routed_to_the_least_loaded_specialist_and_the_run_is_logged(
    app: App, worker: Worker
) -> None:
    for name, slots in (("dr.busy", 5), ("dr.free", 9)):
        admin.put_specialist(
            app.deps,
            ADMIN,
            name,
            {
                "specialty": "cardiology",
                "clinics": ["riverside-clinic"],
                "max_workload": 10,
                "open_slots": slots,
            },
        )
    case_id = _create(app)
    worker.run_until_idle()
    with app.deps.read_uow() as work:
        case = work.cases.get(case_id)
    assert case.data["queue"] == "cardiology-riverside" and case.data["team"] == "cardiology"
    assert case.assignee == "dr.free"  # equal workload: the one with more open slots
    routed = next(r for r in _runs(app, case_id) if r["rule_key"] == "route-new-referral")
    assert routed["outcome"] == "applied"
    assert routed["ruleset_key"] == "referral-automation" and routed["ruleset_version"] == 1
    assert routed["results"][0]["queue"] == "cardiology-riverside"
    assert routed["results"][0]["specialist"] == "dr.free"


def test_a_redelivered_event_applies_each_rule_only_once(app: App, worker: Worker) -> None:
    case_id = _create(app, urgency="emergent")
    worker.run_until_idle()
    tasks_before = _tasks(app, case_id)
    assert tasks_before.count("Emergent referral: clinical triage") == 1
    # A worker that crashed after its effects committed but before the row was marked
    # would see the event again: replay every event of the case through the dispatcher.
    with app.deps.uow() as work:
        events = work.outbox.for_case(case_id)
        for event in events:
            with work.savepoint():
                worker.handlers[1](work, event)
        work.commit()
    worker.run_until_idle()
    assert _tasks(app, case_id) == tasks_before
    with app.engine.connect() as connection:
        per_rule = connection.execute(
            select(automation_runs.c.event_key, automation_runs.c.rule_key, func.count())
            .where(automation_runs.c.case_id == case_id)
            .group_by(automation_runs.c.event_key, automation_runs.c.rule_key)
        ).all()
    assert per_rule and all(count == 1 for _, _, count in per_rule)


def test_a_skipped_rule_records_the_inputs_of_its_condition(app: App, worker: Worker) -> None:
    case_id = _create(app, urgency="routine")
    worker.run_until_idle()
    skipped = next(r for r in _runs(app, case_id) if r["rule_key"] == "emergent-priority")
    assert skipped["outcome"] == "skipped"
    assert skipped["inputs"] == {"urgency": "routine"}
    assert skipped["error"] == "condition is false"


def test_a_field_change_rule_compares_the_value_before_and_after(app: App, worker: Worker) -> None:
    case_id = _create(app, urgency="urgent")
    worker.run_until_idle()
    update_case(
        app.deps, INTAKE, case_id, _version(app, case_id), ReferralChanges(network_status="unknown")
    )
    worker.run_until_idle()
    assert not any(r["rule_key"] == "urgency-raised" for r in _runs(app, case_id))
    update_case(
        app.deps, INTAKE, case_id, _version(app, case_id), ReferralChanges(urgency="emergent")
    )
    worker.run_until_idle()
    raised = next(r for r in _runs(app, case_id) if r["rule_key"] == "urgency-raised")
    assert raised["outcome"] == "applied"
    with app.deps.read_uow() as work:
        case = work.cases.get(case_id)
        notes = work.webhooks.notifications(case_id)
    assert case.data["priority"] == "critical"
    assert [n["recipient"] for n in notes if n["channel"] == "in_app"] == ["role:clinical_triage"]


def test_a_rule_chain_stops_at_its_depth_limit_with_an_exception_task(
    app: App, worker: Worker
) -> None:
    store_rules(
        app,
        """
  - key: raise
    trigger: {on: field_changed, field: priority, after: "case.priority == 'high'"}
    actions: [{set_field: {field: priority, value: critical}}]
  - key: lower
    trigger: {on: field_changed, field: priority, after: "case.priority == 'critical'"}
    actions: [{set_field: {field: priority, value: high}}]
""",
        depth=3,
    )
    case_id = _create(app, urgency="routine")
    worker.run_until_idle()
    update_case(app.deps, INTAKE, case_id, _version(app, case_id), ReferralChanges(priority="high"))
    worker.run_until_idle()
    runs = [r for r in _runs(app, case_id) if r["ruleset_key"] == "test-rules"]
    assert [r["depth"] for r in runs if r["outcome"] == "applied"] == [0, 1, 2]
    stopped = [r for r in runs if r["outcome"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["depth"] == 3
    assert any(
        t.startswith("Automation stopped: rule chain reached depth 3") for t in _tasks(app, case_id)
    )


def test_a_rule_whose_action_cannot_apply_is_recorded_and_handed_to_a_person(
    app: App, worker: Worker
) -> None:
    store_rules(
        app,
        """
  - key: jump-to-triage
    trigger: created
    actions:
      - create_task: {title: "kept only if the whole rule applies"}
      - transition: {name: triage_accept}
  - key: still-runs
    trigger: created
    actions: [{create_task: {title: "independent rule"}}]
""",
    )
    case_id = _create(app)
    worker.run_until_idle()
    failed = next(r for r in _runs(app, case_id) if r["rule_key"] == "jump-to-triage")
    assert failed["outcome"] == "failed" and "not allowed" in failed["error"]
    tasks = _tasks(app, case_id)
    assert "kept only if the whole rule applies" not in tasks  # the rule is all or nothing
    assert "independent rule" in tasks
    assert any(t.startswith("Automation rule jump-to-triage failed") for t in tasks)


def test_an_invalid_rule_set_is_refused_with_its_lines_and_the_active_one_stays(
    app: App, worker: Worker
) -> None:
    bad = """kind: rules
key: referral-automation
version: 2
case_type: referral
rules:
  - key: broken
    trigger: {on: transitioned, to: nowhere}
    when: case.no_such_field == 'x'
    actions:
      - transition: {name: fly_away}
      - notify: {channel: pigeon, template: missing, to: everyone}
"""
    with pytest.raises(DefinitionInvalid) as raised:
        admin.store_definition(app.deps, app.automation, ADMIN, bad, "bad.yaml", activate=True)
    problems = [str(p) for p in raised.value.problems]
    assert "bad.yaml:7: unknown state 'nowhere'" in problems
    assert any(p.startswith("bad.yaml:8: invalid condition: unknown field") for p in problems)
    assert "bad.yaml:10: unknown transition 'fly_away'" in problems
    assert any(p.startswith("bad.yaml:11: channel must be one of") for p in problems)
    active = [d for d in app.automation.stored("rules") if d["active"]]
    assert [(d["key"], d["version"]) for d in active] == [("referral-automation", 1)]


def test_sla_timers_follow_the_state_and_each_fires_once(
    app: App, worker: Worker, clock: ManualClock
) -> None:
    case_id = _create(app, urgency="urgent")  # intake_received, urgent: 4 business hours
    worker.run_until_idle()
    # One step at a time: the warning first; each step plans the next as it fires.
    assert _sla_timers(app, case_id) == [("warn", "pending", "2026-03-02T16:00:00+00:00")]
    clock.advance(hours=3, minutes=30)  # 12:30 UTC: the clinic has not opened yet
    worker.run_until_idle()
    assert _sla_timers(app, case_id) == [("warn", "pending", "2026-03-02T16:00:00+00:00")]
    clock.advance(hours=3, minutes=30)  # 16:00 UTC, 3 business hours: 75% of 4
    worker.run_until_idle()
    worker.run_until_idle()
    # Monday 09:00 UTC is 04:00 in New York: the clock starts at 08:00 local (13:00 UTC).
    assert _sla_timers(app, case_id) == [
        ("warn", "fired", "2026-03-02T16:00:00+00:00"),
        ("breach", "pending", "2026-03-02T17:00:00+00:00"),
    ]
    # The intake event seen again (replayed from the dead letters) replans the state it
    # entered: the step planned since stays, the one fired is not planned again.
    with app.deps.uow() as work:
        created = next(
            e for e in work.outbox.for_case(case_id) if e["event_type"] == "case.created"
        )
        worker.handlers[1](work, created)
        work.commit()
    assert [status for _, status, _ in _sla_timers(app, case_id)] == ["fired", "pending"]
    transition_case(app.deps, INTAKE, case_id, "begin_review", _version(app, case_id))
    worker.run_until_idle()
    with app.deps.read_uow() as work:
        timers = work.timers.for_case(case_id)
    left = {t["name"]: t["status"] for t in timers if t["payload"]["state"] == "intake_received"}
    assert left == {"warn": "fired", "breach": "cancelled"}
    review = [t for t in timers if t["payload"].get("state") == "documentation_review"]
    assert [(t["name"], t["status"]) for t in review if t["kind"] == "sla"] == [("warn", "pending")]
    clock.advance(days=3)
    for _ in range(4):  # each turn fires the step that is due and plans the next
        worker.run_until_idle()
    with app.deps.read_uow() as work:
        fired = [
            t
            for t in work.timers.for_case(case_id)
            if t["status"] == "fired" and t["payload"]["state"] == "documentation_review"
        ]
        events = [e for e in work.outbox.for_case(case_id) if e["event_type"] == "timer.fired"]
        case = work.cases.get(case_id)
    assert sorted(t["name"] for t in fired) == ["breach", "escalate", "warn"]
    assert len(events) == 4  # one event per timer, however often the workers ran
    assert case.assignee == "carl.manager"  # breach: reassigned to the clinic's supervisor
    assert case.data["priority"] == "high"  # escalate: priority raised a step
    sla_runs = [
        (r["rule_key"], r["outcome"]) for r in _runs(app, case_id) if r["ruleset_key"] == "sla"
    ]
    assert sorted(sla_runs) == [
        ("sla.breach", "applied"),
        ("sla.escalate", "applied"),
        ("sla.warn", "applied"),
        ("sla.warn", "applied"),
    ]


def test_a_step_whose_handling_fails_does_not_stop_the_ladder(
    app: App, worker: Worker, clock: ManualClock
) -> None:
    def refuse_warnings(work: Any, event: Any) -> None:  # a subscriber that keeps failing
        if event["event_type"] == "timer.fired" and event["payload"].get("name") == "warn":
            raise RuntimeError("the warning cannot be handled")

    worker.handlers.append(refuse_warnings)
    case_id = _create(app, urgency="urgent")
    worker.run_until_idle()
    clock.advance(days=3)
    for _ in range(4):
        worker.run_until_idle()
    # Each step was planned as the one before fired, however its handling went.
    assert [(name, status) for name, status, _ in _sla_timers(app, case_id)] == [
        ("warn", "fired"),
        ("breach", "fired"),
        ("escalate", "fired"),
    ]
    # The case's later events wait behind the failing one until it is dead-lettered.
    for _ in range(12):
        clock.advance(hours=1)
        worker.run_until_idle()
    with app.deps.read_uow() as work:
        fired = {
            e["payload"]["name"]: e
            for e in work.outbox.for_case(case_id)
            if e["event_type"] == "timer.fired"
        }
    assert fired["warn"]["dead_at"] is not None
    assert "the warning cannot be handled" in fired["warn"]["last_error"]
    assert fired["breach"]["published_at"] and fired["escalate"]["published_at"]
    sla_runs = {
        r["rule_key"]: r["outcome"] for r in _runs(app, case_id) if r["ruleset_key"] == "sla"
    }
    assert sla_runs == {"sla.breach": "applied", "sla.escalate": "applied"}


def _sla_timers(app: App, case_id: int) -> list[tuple[str, str, str]]:
    with app.deps.read_uow() as work:
        timers = work.timers.for_case(case_id)
    return [(t["name"], t["status"], t["due_at"].isoformat()) for t in timers if t["kind"] == "sla"]


def test_a_state_timer_rule_fires_after_business_days_unless_the_case_moved_on(
    app: App, worker: Worker, clock: ManualClock
) -> None:
    store_rules(
        app,
        """
  - key: chase-review
    trigger: {on: timer, state: documentation_review, after: 2 business_days}
    actions: [{create_task: {title: "Documentation review is stalling"}}]
""",
    )
    stays, moves = _create(app), _create(app)
    worker.run_until_idle()
    for case_id in (stays, moves):
        transition_case(app.deps, INTAKE, case_id, "begin_review", _version(app, case_id))
    worker.run_until_idle()
    clock.advance(days=1)
    worker.run_until_idle()
    assert "Documentation review is stalling" not in _tasks(app, stays)
    transition_case(
        app.deps, INTAKE, moves, "request_information", _version(app, moves), reason="need labs"
    )
    clock.advance(days=3)
    worker.run_until_idle()
    worker.run_until_idle()
    assert _tasks(app, stays).count("Documentation review is stalling") == 1
    assert "Documentation review is stalling" not in _tasks(app, moves)
