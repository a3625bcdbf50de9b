"""Four-eyes change governance on real SQLite and PostgreSQL: a definition version takes
effect only when a second administrator approves it; versions diff and roll back; the
governance report labels every step of every active definition."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from careloop.adapters.definitions import load_workflow_text, shipped_definitions
from careloop.bootstrap import STEP_SOURCES, App
from careloop.cli import cli
from careloop.domain.access import SYSTEM_ACTOR
from careloop.domain.errors import (
    ChangeClosed,
    ChangeOutdated,
    DefinitionInvalid,
    FourEyesRequired,
    InvalidInput,
    PermissionDenied,
)
from careloop.engine.worker import Worker
from careloop.services import accounts, governance, governance_queries
from careloop.services.audit_reports import build_query
from careloop.services.cases import create_referral
from careloop.services.governance_report import governance_report
from careloop.services.referral_input import validate_referral
from tests.conftest import ADMIN, AUDITOR, COORDINATOR, INTAKE, referral_payload
from tests.support.governance import SECOND_ADMIN, activate, store_and_activate

RULES = """kind: rules
key: governed-rules
version: {version}
case_type: referral
rules:
  - key: governed-check
    title: Check the referral letter
    trigger: created
    actions: [{{create_task: {{title: "{title}"}}}}]
"""
ROUTING_V1 = dict(shipped_definitions("routing"))["careloop/definitions/routing.yaml"]
WORKFLOW_V1 = dict(shipped_definitions())["careloop/definitions/referral.yaml"]


def _rules(version: int = 1, title: str = "Governed check") -> str:
    return RULES.format(version=version, title=title)


def _submit(app: App, text: str, source: str = "governed.yaml") -> dict[str, Any]:
    return governance.submit_definition(app.deps, app.automation, ADMIN, text, source, "why not")


def _tasks_of_new_referral(app: App, worker: Worker) -> list[str]:
    case, _ = create_referral(app.deps, INTAKE, validate_referral(referral_payload()))
    worker.run_until_idle()
    with app.deps.read_uow() as uow:
        return [t["title"] for t in uow.cases.tasks(case.id)]


def _active(app: App, kind: str) -> list[tuple[str, int]]:
    return [(d["key"], d["version"]) for d in app.automation.stored(kind) if d["active"]]


def _audit(app: App, action: str) -> list[dict[str, Any]]:
    with app.deps.read_uow() as uow:
        return uow.audit.report(build_query(action=action, limit=500))


def test_a_proposed_rule_set_has_no_effect_until_a_second_administrator_approves_it(
    app: App, worker: Worker
) -> None:
    change = _submit(app, _rules())
    assert change["status"] == "proposed" and change["from_version"] is None
    assert "Governed check" not in _tasks_of_new_referral(app, worker)
    assert ("governed-rules", 1) not in _active(app, "rules")

    approved = governance.approve_change(app.deps, app.automation, SECOND_ADMIN, change["id"])

    assert approved["status"] == "approved" and approved["decided_by"] == "bea.admin"
    assert ("governed-rules", 1) in _active(app, "rules")
    assert "Governed check" in _tasks_of_new_referral(app, worker)
    [entry] = _audit(app, "governance.change.approve")
    assert entry["actor_name"] == "bea.admin" and entry["outcome"] == "success"
    assert entry["detail"]["change_id"] == change["id"]


def test_the_author_approving_their_own_change_is_refused_audited_and_changes_nothing(
    app: App, worker: Worker
) -> None:
    change = _submit(app, _rules())

    with pytest.raises(FourEyesRequired) as refused:
        governance.approve_change(app.deps, app.automation, ADMIN, change["id"])

    assert refused.value.code == "four_eyes_required"
    assert "ada.admin proposed change" in refused.value.detail
    assert governance_queries.get_change(app.deps, ADMIN, change["id"])["status"] == "proposed"
    assert ("governed-rules", 1) not in _active(app, "rules")
    assert "Governed check" not in _tasks_of_new_referral(app, worker)
    [entry] = _audit(app, "governance.change.approve")
    assert (entry["actor_name"], entry["outcome"]) == ("ada.admin", "denied")
    assert entry["detail"]["change_id"] == change["id"]
    assert entry["detail"]["code"] == "four_eyes_required"


def test_the_unnamed_system_actor_never_approves_a_change(app: App) -> None:
    change = _submit(app, _rules())
    with pytest.raises(FourEyesRequired, match="named administrator"):
        governance.approve_change(app.deps, app.automation, SYSTEM_ACTOR, change["id"])
    assert governance_queries.get_change(app.deps, ADMIN, change["id"])["status"] == "proposed"


def test_only_administrators_propose_and_approve_changes(app: App) -> None:
    change = _submit(app, _rules())
    with pytest.raises(PermissionDenied):
        governance.approve_change(app.deps, app.automation, COORDINATOR, change["id"])
    with pytest.raises(PermissionDenied):
        governance.propose_change(app.deps, AUDITOR, "rules", "governed-rules", 1)
    assert governance_queries.list_changes(app.deps, AUDITOR)[0]["status"] == "proposed"


def test_a_rejection_needs_a_reason_and_activates_nothing(app: App) -> None:
    change = _submit(app, _rules())
    with pytest.raises(InvalidInput) as missing:
        governance.reject_change(app.deps, SECOND_ADMIN, change["id"], "  ")
    assert [p.field for p in missing.value.problems] == ["reason"]

    rejected = governance.reject_change(app.deps, SECOND_ADMIN, change["id"], "duplicates a task")

    assert (rejected["status"], rejected["decision_reason"]) == ("rejected", "duplicates a task")
    assert ("governed-rules", 1) not in _active(app, "rules")
    with pytest.raises(ChangeClosed, match="already rejected"):
        governance.approve_change(app.deps, app.automation, SECOND_ADMIN, change["id"])


def test_only_the_proposer_withdraws_a_change(app: App) -> None:
    change = _submit(app, _rules())
    with pytest.raises(PermissionDenied, match=r"only ada\.admin"):
        governance.withdraw_change(app.deps, SECOND_ADMIN, change["id"])
    withdrawn = governance.withdraw_change(app.deps, ADMIN, change["id"], "wrong file")
    assert withdrawn["status"] == "withdrawn"


def test_proposing_the_active_an_unstored_or_an_already_proposed_version_is_refused(
    app: App,
) -> None:
    with pytest.raises(InvalidInput, match="already active"):
        governance.propose_change(app.deps, ADMIN, "routing", "referral-routing", 1)
    with pytest.raises(Exception, match="version 7 is not stored"):
        governance.propose_change(app.deps, ADMIN, "routing", "referral-routing", 7)
    with pytest.raises(InvalidInput) as unknown:
        governance.propose_change(app.deps, ADMIN, "spells", "x", 1)
    assert [p.field for p in unknown.value.problems] == ["kind"]
    change = _submit(app, _rules())
    with pytest.raises(InvalidInput, match=f"change {change['id']} already proposes"):
        governance.propose_change(app.deps, ADMIN, "rules", "governed-rules", 1)


def test_a_change_is_refused_once_another_moved_the_active_version(app: App) -> None:
    store_and_activate(app, _rules(1), "v1.yaml")
    second = _submit(app, _rules(2, "Second"), "v2.yaml")
    third = _submit(app, _rules(3, "Third"), "v3.yaml")
    governance.approve_change(app.deps, app.automation, SECOND_ADMIN, second["id"])

    with pytest.raises(ChangeOutdated, match="propose the change again"):
        governance.approve_change(app.deps, app.automation, SECOND_ADMIN, third["id"])

    assert ("governed-rules", 2) in _active(app, "rules")


def test_versions_diff_as_a_unified_diff(app: App) -> None:
    _submit(app, _rules(2, "Look again"))
    _submit(app, _rules(3, "Look again"), "v3.yaml")
    found = governance_queries.diff_versions(app.deps, AUDITOR, "rules", "governed-rules", 2, 3)
    assert found["diff"].splitlines() == [
        "--- rules/governed-rules/v2",
        "+++ rules/governed-rules/v3",
        "@@ -1,6 +1,6 @@",
        " kind: rules",
        " key: governed-rules",
        "-version: 2",
        "+version: 3",
        " case_type: referral",
        " rules:",
        "   - key: governed-check",
    ]


def test_a_change_carries_its_diff_against_the_active_version(app: App) -> None:
    routing_v2 = ROUTING_V1.replace("version: 1", "version: 2").replace(
        "queue: rural-outreach", "queue: rural-telehealth"
    )
    change = _submit(app, routing_v2, "routing-v2.yaml")
    assert change["from_version"] == 1 and change["purpose"] == "activate"
    assert "-version: 1\n+version: 2\n" in change["diff"]
    assert "-    queue: rural-outreach\n+    queue: rural-telehealth\n" in change["diff"]


def test_a_rollback_reactivates_an_earlier_version_once_a_second_administrator_approves(
    app: App,
) -> None:
    routing_v2 = ROUTING_V1.replace("version: 1", "version: 2")
    store_and_activate(app, routing_v2, "routing-v2.yaml")
    assert _active(app, "routing") == [("referral-routing", 2)]
    with pytest.raises(InvalidInput) as no_reason:
        governance.propose_change(
            app.deps, ADMIN, "routing", "referral-routing", 1, "", rollback=True
        )
    assert [p.field for p in no_reason.value.problems] == ["reason"]

    change = governance.propose_change(
        app.deps, ADMIN, "routing", "referral-routing", 1, "v2 misroutes", rollback=True
    )
    assert (change["purpose"], change["from_version"]) == ("rollback", 2)
    assert _active(app, "routing") == [("referral-routing", 2)]
    with pytest.raises(FourEyesRequired):
        governance.approve_change(app.deps, app.automation, ADMIN, change["id"])
    governance.approve_change(app.deps, app.automation, SECOND_ADMIN, change["id"])
    assert _active(app, "routing") == [("referral-routing", 1)]


def test_a_rollback_must_name_an_earlier_version(app: App) -> None:
    _submit(app, ROUTING_V1.replace("version: 1", "version: 2"), "routing-v2.yaml")
    with pytest.raises(InvalidInput, match="before the active 1"):
        governance.propose_change(
            app.deps, ADMIN, "routing", "referral-routing", 2, "no", rollback=True
        )


def test_a_new_workflow_version_starts_new_cases_only_after_approval(app: App) -> None:
    text_v2 = WORKFLOW_V1.replace("version: 1", "version: 2")
    change = _submit(app, text_v2, "referral-v2.yaml")
    assert change["kind"] == "workflow" and change["from_version"] == 1

    before, _ = create_referral(app.deps, INTAKE, validate_referral(referral_payload()))
    assert before.workflow_version == 1
    governance.approve_change(app.deps, app.automation, SECOND_ADMIN, change["id"])
    after, _ = create_referral(app.deps, INTAKE, validate_referral(referral_payload()))

    assert after.workflow_version == 2
    with app.deps.read_uow() as uow:
        assert uow.cases.get(before.id).workflow_version == 1
    listed = {(w["version"], w["active"]) for w in app.deps.workflows.list()}
    assert listed == {(1, False), (2, True)}


def test_a_workflow_version_the_active_rules_do_not_fit_is_refused_at_approval(
    app: App,
) -> None:
    renamed = WORKFLOW_V1.replace("version: 1", "version: 2").replace(
        "appointment_scheduled", "appointment_booked"
    )
    change = _submit(app, renamed, "referral-v2.yaml")
    with pytest.raises(DefinitionInvalid, match="appointment_scheduled"):
        governance.approve_change(app.deps, app.automation, SECOND_ADMIN, change["id"])
    assert governance_queries.get_change(app.deps, ADMIN, change["id"])["status"] == "proposed"
    assert app.deps.workflows.latest("referral").version == 1


def test_an_unknown_performer_label_is_refused_with_its_line() -> None:
    text = WORKFLOW_V1.replace("  - name: begin_review\n",
                               "  - name: begin_review\n    performed_by: robot\n", 1)
    assert "performed_by: robot" in text
    with pytest.raises(DefinitionInvalid) as refused:
        load_workflow_text(text, "referral.yaml")
    [problem] = refused.value.problems
    assert problem.line is not None and "performed_by 'robot' is not one of" in problem.problem


def test_the_governance_report_labels_every_step_and_names_proposer_and_approver(
    app: App,
) -> None:
    approving = _rules().replace(
        'actions: [{create_task: {title: "Governed check"}}]',
        "actions: [{request_approval: {policy: out-of-network}}]",
    )
    store_and_activate(app, approving, "approving.yaml")
    rows = governance_report(app.deps, app.automation, AUDITOR, STEP_SOURCES)
    by_step = {(r["kind"], r["key"], r["step"]): r for r in rows}

    workflow = load_workflow_text(WORKFLOW_V1, "referral.yaml")
    for name in workflow.transitions:
        assert by_step[("workflow", "referral-standard", name)]["label"] == "human"
    check = by_step[("rules", "governed-rules", "governed-check")]
    assert check["label"] == "automated"
    asked = by_step[("rules", "governed-rules", "governed-check/request_approval")]
    assert asked["label"] == "human_approval" and "out-of-network" in asked["detail"]
    assert (asked["proposed_by"], asked["approved_by"]) == ("ada.admin", "bea.admin")
    assert asked["change_id"] is not None
    routed = by_step[("routing", "referral-routing", "row 1")]
    assert routed["label"] == "automated" and "urgent-triage" in routed["detail"]
    assert by_step[("calendars", "calendars", "default")]["label"] == "automated"
    baseline = by_step[("workflow", "referral-standard", "begin_review")]
    assert (baseline["proposed_by"], baseline["approved_by"]) == ("system", "system")
    assert baseline["version"] == 1 and baseline["change_id"] is None
    with pytest.raises(PermissionDenied):
        governance_report(app.deps, app.automation, INTAKE, STEP_SOURCES)


def test_activation_through_the_helper_records_who_approved(app: App) -> None:
    _submit(app, ROUTING_V1.replace("version: 1", "version: 2"), "routing-v2.yaml")
    # The pending change is withdrawn first: one open proposal per version.
    [pending] = governance_queries.list_changes(app.deps, ADMIN, status="proposed")
    governance.withdraw_change(app.deps, ADMIN, pending["id"])
    activate(app, "routing", "referral-routing", 2)
    [row] = [d for d in app.automation.stored("routing") if d["active"]]
    assert (row["version"], row["activated_by"]) == (2, "bea.admin")


def test_the_cli_proposes_as_one_named_administrator_and_approves_as_another(
    app: App, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("ada", "bea"):
        accounts.add_user(app.deps, SYSTEM_ACTOR, app.hashing, name, name, ["administrator"], None)
    monkeypatch.setenv(
        "CARELOOP_DATABASE_URL", str(app.engine.url.render_as_string(hide_password=False))
    )
    path = tmp_path / "governed.yaml"
    path.write_text(_rules(), encoding="utf-8")
    runner = CliRunner()

    stored = runner.invoke(cli, ["rules", "store", str(path)])
    assert stored.exit_code == 0, stored.output
    proposed = runner.invoke(cli, ["rules", "activate", "governed-rules", "1", "--as", "ada"])
    assert proposed.exit_code == 0, proposed.output
    assert "second administrator" in proposed.output
    [change] = governance_queries.list_changes(app.deps, ADMIN, status="proposed")
    own = runner.invoke(cli, ["governance", "approve", str(change["id"]), "--as", "ada"])
    assert isinstance(own.exception, FourEyesRequired)
    assert ("governed-rules", 1) not in _active(app, "rules")
    approved = runner.invoke(cli, ["governance", "approve", str(change["id"]), "--as", "bea"])
    assert approved.exit_code == 0, approved.output
    assert "approved by bea" in approved.output
    app.automation.invalidate()
    assert ("governed-rules", 1) in _active(app, "rules")
    report = runner.invoke(cli, ["governance", "report", "--format", "csv"])
    assert report.exit_code == 0, report.output
    header, *rows = list(csv.reader(io.StringIO(report.output)))
    assert header[:5] == ["kind", "key", "version", "step", "label"]
    assert ["rules", "governed-rules", "1", "governed-check", "automated"] in [r[:5] for r in rows]
