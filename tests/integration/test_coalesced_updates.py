"""The field changes that one event's rules make reach the outbox as one case.updated:
what subscribers and field-change rules see, as after one person's edit."""

from typing import Any

from sqlalchemy import select

from careloop.adapters.db.tables import outbox
from careloop.bootstrap import App
from careloop.engine.worker import Worker
from careloop.services.cases import create_referral, transition_case
from careloop.services.referral_input import validate_referral
from tests.conftest import INTAKE, referral_payload
from tests.support.governance import store_rules


def _move_to_review(app: App, worker: Worker) -> int:
    case, _ = create_referral(app.deps, INTAKE, validate_referral(referral_payload()))
    worker.run_until_idle()  # the shipped rules route the new referral
    with app.deps.read_uow() as work:
        version = work.cases.get(case.id).version
    transition_case(app.deps, INTAKE, case.id, "begin_review", version)
    worker.run_until_idle()
    return case.id


def _outbox(app: App, case_id: int) -> list[Any]:
    """The case's events as (type, payload, key), in the order they were published."""
    with app.engine.connect() as connection:
        return list(
            connection.execute(
                select(outbox.c.event_type, outbox.c.payload, outbox.c.idempotency_key)
                .where(outbox.c.case_id == case_id)
                .order_by(outbox.c.id)
            ).all()
        )


def _caused_by_review(app: App, case_id: int) -> list[dict[str, Any]]:
    """The events the test rules caused on the case's move to documentation review, in
    order (the shipped rule set's activation publishes its own)."""
    rows = _outbox(app, case_id)
    moved = next(key for kind, _, key in rows if kind == "case.transitioned")
    return [
        {"type": kind, **payload}
        for kind, payload, _ in rows
        if (payload.get("automation") or {}).get("event") == moved
        and payload["automation"]["rule"] != "missing-referral-letter"
    ]


def _runs(app: App, case_id: int, rule_key: str) -> list[dict[str, Any]]:
    with app.deps.read_uow() as work:
        return [r for r in work.automation.runs_for_case(case_id) if r["rule_key"] == rule_key]


def test_the_rules_of_one_event_publish_one_update_with_every_field_and_its_old_value(
    app: App, worker: Worker
) -> None:
    store_rules(
        app,
        """
  - key: set-queue
    trigger: {on: transitioned, to: documentation_review}
    actions: [{set_field: {field: queue, value: coalesce-queue}}]
  - key: set-team
    trigger: {on: transitioned, to: documentation_review}
    actions: [{set_field: {field: team, value: coalesce-team}}]
  - key: add-task
    trigger: {on: transitioned, to: documentation_review}
    actions: [{create_task: {title: "Check the documents"}}]
  - key: team-changed
    trigger: {on: field_changed, field: team, after: "case.team == 'coalesce-team'"}
    actions: [{create_task: {title: "Team changed"}}]
""",
    )
    case_id = _move_to_review(app, worker)
    caused = _caused_by_review(app, case_id)
    assert [e["type"] for e in caused] == ["case.updated", "case.task_added"]
    update = caused[0]
    assert update["fields"] == ["queue", "team"]
    # As the shipped routing rule left them when the referral came in.
    assert update["before"] == {"queue": "cardiology-riverside", "team": "cardiology"}
    assert update["automation"]["rule"] == "set-queue"
    assert update["automation"]["rules"] == ["set-queue", "set-team"]
    assert update["automation"]["depth"] == 1
    assert caused[1]["automation"]["rule"] == "add-task"
    assert "rules" not in caused[1]["automation"]
    # The field-change rule ran on the merged update, once.
    assert [r["outcome"] for r in _runs(app, case_id, "team-changed")] == ["applied"]


def test_a_field_set_and_set_back_by_the_rules_of_one_event_is_no_update(
    app: App, worker: Worker
) -> None:
    store_rules(
        app,
        """
  - key: raise
    trigger: {on: transitioned, to: documentation_review}
    actions: [{set_field: {field: network_status, value: out_of_network}}]
  - key: restore
    trigger: {on: transitioned, to: documentation_review}
    actions: [{set_field: {field: network_status, value: in_network}}]
  - key: watch
    trigger: {on: field_changed, field: network_status}
    actions: [{create_task: {title: "Network status changed"}}]
""",
    )
    case_id = _move_to_review(app, worker)
    assert [e["type"] for e in _caused_by_review(app, case_id)] == []
    assert [r["outcome"] for r in _runs(app, case_id, "raise")] == ["applied"]
    assert [r["outcome"] for r in _runs(app, case_id, "restore")] == ["applied"]
    assert _runs(app, case_id, "watch") == []


def test_a_failing_rule_keeps_the_events_of_the_rules_before_it_in_order(
    app: App, worker: Worker
) -> None:
    store_rules(
        app,
        """
  - key: set-queue
    trigger: {on: transitioned, to: documentation_review}
    actions: [{set_field: {field: queue, value: before-the-failure}}]
  - key: cannot-apply
    trigger: {on: transitioned, to: documentation_review}
    actions:
      - set_field: {field: team, value: never-set}
      - transition: {name: triage_accept}
  - key: set-priority
    trigger: {on: transitioned, to: documentation_review}
    actions: [{set_field: {field: priority, value: high}}]
""",
    )
    case_id = _move_to_review(app, worker)
    rows = _outbox(app, case_id)
    moved = [kind for kind, _, _ in rows].index("case.transitioned")
    after = [
        (kind, payload["automation"]["rule"], payload.get("fields"))
        for kind, payload, _ in rows[moved + 1 :]
        if payload["automation"]["rule"] != "missing-referral-letter"
    ]
    # The failed rule's change was rolled back with it and is in no event; the update
    # made before it is published before its exception task, the one after it after.
    assert after == [
        ("case.updated", "set-queue", ["queue"]),
        ("case.task_added", "cannot-apply", None),
        ("case.updated", "set-priority", ["priority"]),
    ]
    with app.deps.read_uow() as work:
        case = work.cases.get(case_id)
    assert case.data.get("team") != "never-set"
    assert [r["outcome"] for r in _runs(app, case_id, "cannot-apply")] == ["failed"]
