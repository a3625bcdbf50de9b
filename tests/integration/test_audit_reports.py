"""Audit reports (ONC 170.315(d)(3)) on real SQLite and PostgreSQL: a period's entries,
filtered by user, patient, action and data category, sorted, paged, exported as CSV
that a spreadsheet cannot run; reading a report is audited and the log still verifies."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from careloop.adapters.db.audit_store import verify_audit_log
from careloop.bootstrap import App
from careloop.cli import cli
from careloop.domain.errors import InvalidInput, PermissionDenied
from careloop.services import queries
from careloop.services.audit_reports import (
    COLUMNS,
    audit_report,
    build_query,
    export_audit_csv,
)
from careloop.services.cases import create_referral, transition_case
from careloop.services.ports import ManualClock
from careloop.services.referral_input import validate_referral
from tests.conftest import ADMIN, AUDITOR, COORDINATOR, INTAKE, START, referral_payload

DAY = timedelta(days=1)


def _patient(mrn: str, family: str) -> dict[str, object]:
    payload = referral_payload()
    patient = dict(payload["patient"])  # type: ignore[call-overload]
    patient.update(mrn=mrn, family_name=family)
    return patient


def _fill(app: App, clock: ManualClock) -> dict[str, int]:
    """Day 0: intake creates A; day 1: intake creates B and the admin reads A; day 2:
    intake cancels B with a formula for a reason."""
    first, _ = create_referral(
        app.deps, INTAKE, validate_referral(referral_payload(patient=_patient("MRN-A", "Adams")))
    )
    clock.advance(days=1)
    second, _ = create_referral(
        app.deps, INTAKE, validate_referral(referral_payload(patient=_patient("MRN-B", "Baker")))
    )
    queries.get_case(app.deps, ADMIN, first.id)
    clock.advance(days=1)
    transition_case(app.deps, INTAKE, second.id, "cancel", 1, reason='=HYPERLINK("http://x")')
    clock.advance(days=1)
    return {"first": first.id, "second": second.id}


def _actions(page: dict[str, object]) -> list[tuple[str, str]]:
    return [(e["user"], e["action"]) for e in page["items"]]  # type: ignore[attr-defined]


def test_a_report_covers_only_its_period(app: App, clock: ManualClock) -> None:
    _fill(app, clock)
    query = build_query(start=START + DAY, end=START + 2 * DAY, action="case.*")
    page = audit_report(app.deps, AUDITOR, query)
    assert _actions(page) == [("ian.intake", "case.create"), ("ada.admin", "case.read")]
    assert page["total"] == 2 and page["next_offset"] is None
    assert all(START + DAY <= _at(e) < START + 2 * DAY for e in page["items"])


def _at(entry: dict[str, object]) -> object:
    from datetime import datetime

    return datetime.fromisoformat(str(entry["occurred_at"]))


def test_a_report_filters_by_user_patient_action_and_category(app: App, clock: ManualClock) -> None:
    _fill(app, clock)
    by_patient = audit_report(app.deps, AUDITOR, build_query(patient="MRN-B"))
    assert _actions(by_patient) == [
        ("ian.intake", "case.create"),
        ("ian.intake", "case.transition"),
    ]
    by_user = audit_report(app.deps, AUDITOR, build_query(user="ada.admin", action="case.read"))
    [read] = by_user["items"]
    assert (read["patient"], read["data_category"]) == ("MRN-A", "demographics")
    by_category = audit_report(
        app.deps, AUDITOR, build_query(category="administrative", action="case.*")
    )
    assert _actions(by_category) == [("ian.intake", "case.transition")]


def test_every_entry_carries_the_d2_field_set(app: App, clock: ManualClock) -> None:
    _fill(app, clock)
    page = audit_report(app.deps, AUDITOR, build_query(action="case.transition"))
    [entry] = page["items"]
    assert entry["occurred_at"] == (START + 2 * DAY).isoformat()
    assert (entry["user"], entry["user_id"]) == ("ian.intake", 2)
    assert (entry["action"], entry["outcome"]) == ("case.transition", "success")
    assert entry["patient"] == "MRN-B" and entry["source_address"] == "127.0.0.1"
    assert entry["reason"] == '=HYPERLINK("http://x")'
    assert entry["data_category"] and entry["entry"].count(":") == 1


@pytest.mark.parametrize(
    "sort, expected",
    [
        ("user", ["ada.admin", "ian.intake", "ian.intake", "ian.intake"]),
        ("-user", ["ian.intake", "ian.intake", "ian.intake", "ada.admin"]),
        ("patient:desc", ["MRN-B", "MRN-B", "MRN-A", "MRN-A"]),
        ("action", ["case.create", "case.create", "case.read", "case.transition"]),
    ],
)
def test_a_report_sorts_by_a_field_in_either_direction(
    app: App, clock: ManualClock, sort: str, expected: list[str]
) -> None:
    _fill(app, clock)
    field = {"user": "user", "-user": "user", "patient:desc": "patient", "action": "action"}[sort]
    page = audit_report(app.deps, AUDITOR, build_query(action="case.*", sort=sort))
    assert [e[field] for e in page["items"]] == expected


def test_entries_without_a_patient_sort_last_either_way(app: App, clock: ManualClock) -> None:
    _fill(app, clock)
    audit_report(app.deps, AUDITOR, build_query())  # its own entry names no patient
    for sort in ("patient", "-patient"):
        page = audit_report(app.deps, AUDITOR, build_query(sort=sort, limit=500))
        patients = [e["patient"] for e in page["items"]]
        assert None in patients
        assert patients.index(None) == len([p for p in patients if p is not None])


def test_a_report_pages_through_its_entries(app: App, clock: ManualClock) -> None:
    _fill(app, clock)
    query = dict(action="case.*", sort="-time", limit=3)
    first = audit_report(app.deps, AUDITOR, build_query(**query))  # type: ignore[arg-type]
    assert (first["total"], first["next_offset"], len(first["items"])) == (4, 3, 3)
    rest = audit_report(app.deps, AUDITOR, build_query(**query, offset=3))  # type: ignore[arg-type]
    assert rest["next_offset"] is None
    assert _actions(rest) == [("ian.intake", "case.create")]
    assert first["items"][0]["action"] == "case.transition"


def test_reading_a_report_is_itself_audited(app: App, clock: ManualClock) -> None:
    _fill(app, clock)
    audit_report(app.deps, AUDITOR, build_query(patient="MRN-A", sort="-time"))
    page = audit_report(app.deps, AUDITOR, build_query(action="audit.report.*"))
    [entry] = page["items"]
    assert (entry["user"], entry["action"], entry["data_category"]) == (
        "aud.auditor",
        "audit.report.read",
        "audit",
    )
    assert entry["detail"]["filters"] == {"patient": "MRN-A", "sort": "-time"}
    assert entry["detail"]["total"] == 2


def test_only_roles_with_audit_access_read_reports(app: App) -> None:
    with pytest.raises(PermissionDenied):
        audit_report(app.deps, COORDINATOR, build_query())
    with pytest.raises(PermissionDenied):
        export_audit_csv(app.deps, COORDINATOR, build_query())


def test_bad_report_parameters_are_refused_naming_each_field() -> None:
    with pytest.raises(InvalidInput) as refused:
        build_query(start=START, end=START - DAY, sort="mood", limit=0, offset=-1, action="ca*se")
    fields = [p.field for p in refused.value.problems]
    assert fields == ["to", "action", "sort", "offset", "limit"]
    with pytest.raises(InvalidInput) as naive:
        build_query(start=START.replace(tzinfo=None))
    assert naive.value.problems[0].field == "from"


def test_the_csv_export_has_a_header_every_entry_and_no_runnable_formulas(
    app: App, clock: ManualClock
) -> None:
    _fill(app, clock)
    lines = list(export_audit_csv(app.deps, AUDITOR, build_query(action="case.*")))
    rows = list(csv.reader(io.StringIO("".join(lines))))
    assert tuple(rows[0]) == COLUMNS
    assert len(rows) == 1 + 4
    cancelled = dict(zip(COLUMNS, rows[-1], strict=True))
    assert cancelled["reason"] == '\'=HYPERLINK("http://x")'
    assert json.loads(cancelled["detail"])["transition"] == "cancel"
    for row in rows[1:]:
        assert not any(cell.startswith(("=", "+", "-", "@")) for cell in row)
    exported = audit_report(app.deps, AUDITOR, build_query(action="audit.report.export"))
    assert exported["total"] == 1


def test_the_cli_writes_a_report_as_csv_or_json(
    app: App, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(app, clock)
    monkeypatch.setenv(
        "CARELOOP_DATABASE_URL", str(app.engine.url.render_as_string(hide_password=False))
    )
    arguments = ["audit", "report", "--patient", "MRN-A", "--sort", "-time"]
    as_csv = CliRunner().invoke(cli, [*arguments, "--format", "csv"])
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.DictReader(io.StringIO(as_csv.output)))
    assert [r["action"] for r in rows] == ["case.read", "case.create"]
    as_json = CliRunner().invoke(
        cli, [*arguments, "--from", (START + DAY).isoformat(), "--format", "json"]
    )
    assert as_json.exit_code == 0, as_json.output
    assert [e["action"] for e in json.loads(as_json.output)] == ["case.read"]
    bad = CliRunner().invoke(cli, [*arguments, "--from", "yesterday"])
    assert bad.exit_code == 2 and "--from" in bad.output


def test_verify_still_detects_tampering_with_report_entries(app: App, clock: ManualClock) -> None:
    _fill(app, clock)
    audit_report(app.deps, AUDITOR, build_query())
    assert all(result.ok for result in verify_audit_log(app.engine))
    statement = "UPDATE audit_log SET actor_name = 'mallory' WHERE action = 'audit.report.read'"
    with app.engine.begin() as connection:
        if app.engine.dialect.name == "postgresql":
            connection.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
            connection.execute(text(statement))
            connection.execute(text("ALTER TABLE audit_log ENABLE TRIGGER USER"))
        else:
            connection.execute(text("DROP TRIGGER audit_log_no_update"))
            connection.execute(text(statement))
    bad = [r for r in verify_audit_log(app.engine) if not r.ok]
    assert len(bad) == 1 and bad[0].problem == "entry content does not match its hash"
