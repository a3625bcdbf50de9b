"""`careloop governance ...` (four-eyes change requests, diffs, rollbacks, the report)
and `careloop audit report`.

Proposals and decisions are made as a named user (`--as NAME`): four-eyes needs two
people, and the unnamed system actor never approves.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from careloop.bootstrap import STEP_SOURCES, App
from careloop.domain.access import SYSTEM_ACTOR, Actor
from careloop.services import governance, governance_queries
from careloop.services.audit_reports import (
    build_query,
    csv_line,
    export_audit_csv,
    export_audit_entries,
)
from careloop.services.governance_report import REPORT_COLUMNS, governance_report

governance_cli = typer.Typer(
    help="Change governance: proposals a second administrator approves", no_args_is_help=True
)

AsUser = Annotated[str, typer.Option("--as", help="the administrator acting (a username)")]
Reason = Annotated[str, typer.Option(help="why")]
Format = Annotated[str, typer.Option("--format", help="json or csv")]


def operator(app: App, username: str | None) -> Actor:
    """The named user acting, or the system actor when nobody is named."""
    if username is None:
        return SYSTEM_ACTOR
    return governance_queries.named_actor(app.deps, username)


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, default=str, indent=2))


def _summary(change: dict[str, Any]) -> str:
    return (
        f"change {change['id']} {change['status']}: {change['purpose']} {change['kind']} "
        f"{change['key']} v{change['version']} (active: v{change['from_version']}) "
        f"proposed by {change['proposed_by']}"
        + (f", {change['status']} by {change['decided_by']}" if change["decided_by"] else "")
    )


@governance_cli.command("changes")
def list_changes(
    status: Annotated[str | None, typer.Option(help="proposed|approved|rejected|withdrawn")] = None,
    kind: Annotated[str | None, typer.Option(help="workflow|rules|routing|calendars|...")] = None,
) -> None:
    """Change requests, newest first."""
    from careloop.cli import _app

    with _app() as app:
        for change in governance_queries.list_changes(app.deps, SYSTEM_ACTOR, status, kind):
            typer.echo(_summary(change))


@governance_cli.command("show")
def show(change_id: int) -> None:
    """One change request and its diff against the version active when it was proposed."""
    from careloop.cli import _app

    with _app() as app:
        change = governance_queries.get_change(app.deps, SYSTEM_ACTOR, change_id)
    typer.echo(_summary(change))
    typer.echo(change["diff"] or "(no difference)")


@governance_cli.command("submit")
def submit(path: Path, as_user: AsUser, reason: Reason = "") -> None:
    """Store a definition file (any kind) and propose activating it."""
    from careloop.cli import _app

    with _app() as app:
        change = governance.submit_definition(
            app.deps,
            app.automation,
            operator(app, as_user),
            path.read_text("utf-8"),
            str(path),
            reason,
        )
    typer.echo(_summary(change) + "; a second administrator must approve it")


@governance_cli.command("propose")
def propose(kind: str, key: str, version: int, as_user: AsUser, reason: Reason = "") -> None:
    """Propose activating a stored version."""
    from careloop.cli import _app

    with _app() as app:
        change = governance.propose_change(
            app.deps, operator(app, as_user), kind, key, version, reason
        )
    typer.echo(_summary(change) + "; a second administrator must approve it")


@governance_cli.command("rollback")
def rollback(kind: str, key: str, version: int, as_user: AsUser, reason: Reason) -> None:
    """Propose going back to an earlier version (four-eyes too)."""
    from careloop.cli import _app

    with _app() as app:
        change = governance.propose_change(
            app.deps, operator(app, as_user), kind, key, version, reason, rollback=True
        )
    typer.echo(_summary(change) + "; a second administrator must approve it")


@governance_cli.command("approve")
def approve(change_id: int, as_user: AsUser, reason: Reason = "") -> None:
    """Approve someone else's change: its version becomes active now."""
    from careloop.cli import _app

    with _app() as app:
        change = governance.approve_change(
            app.deps, app.automation, operator(app, as_user), change_id, reason
        )
    typer.echo(_summary(change))


@governance_cli.command("reject")
def reject(change_id: int, as_user: AsUser, reason: Reason) -> None:
    """Reject a change, with a reason; nothing is activated."""
    from careloop.cli import _app

    with _app() as app:
        change = governance.reject_change(app.deps, operator(app, as_user), change_id, reason)
    typer.echo(_summary(change))


@governance_cli.command("withdraw")
def withdraw(change_id: int, as_user: AsUser, reason: Reason = "") -> None:
    """Withdraw your own proposal."""
    from careloop.cli import _app

    with _app() as app:
        change = governance.withdraw_change(app.deps, operator(app, as_user), change_id, reason)
    typer.echo(_summary(change))


@governance_cli.command("diff")
def diff(kind: str, key: str, from_version: int, to_version: int) -> None:
    """Unified diff between two stored versions of a definition."""
    from careloop.cli import _app

    with _app() as app:
        found = governance_queries.diff_versions(
            app.deps, SYSTEM_ACTOR, kind, key, from_version, to_version
        )
    typer.echo(found["diff"] or "(no difference)", nl=False)


@governance_cli.command("report")
def report(output: Format = "json") -> None:
    """Every active definition's steps, labelled, with who proposed and approved them."""
    from careloop.cli import _app

    _check_format(output)
    with _app() as app:
        rows = governance_report(app.deps, app.automation, SYSTEM_ACTOR, STEP_SOURCES)
    if output == "json":
        _echo_json(rows)
    else:
        _write_lines(
            [csv_line(REPORT_COLUMNS), *(csv_line(r[c] for c in REPORT_COLUMNS) for r in rows)]
        )


def audit_report_command(
    start: Annotated[str | None, typer.Option("--from", help="ISO 8601, inclusive")] = None,
    end: Annotated[str | None, typer.Option("--to", help="ISO 8601, exclusive")] = None,
    user: Annotated[str | None, typer.Option(help="username")] = None,
    patient: Annotated[str | None, typer.Option(help="patient identifier (MRN)")] = None,
    action: Annotated[str | None, typer.Option(help="exact, or a prefix like 'case.*'")] = None,
    category: Annotated[str | None, typer.Option(help="data category")] = None,
    sort: Annotated[str, typer.Option(help="time|user|action|patient|...; '-' descends")] = "time",
    output: Format = "csv",
    as_user: Annotated[str | None, typer.Option("--as", help="who reads (audited)")] = None,
) -> None:
    """An audit report (ONC 170.315(d)(3)) of a period; reading it is audited."""
    from careloop.cli import _app

    _check_format(output)
    query = build_query(
        start=_moment("--from", start),
        end=_moment("--to", end),
        user=user,
        patient=patient,
        action=action,
        category=category,
        sort=sort,
    )
    with _app() as app:
        reader = operator(app, as_user)
        if output == "csv":
            _write_lines(export_audit_csv(app.deps, reader, query))
        else:
            _write_json_array(export_audit_entries(app.deps, reader, query))


def _check_format(output: str) -> None:
    if output not in ("json", "csv"):
        typer.echo("error: --format must be json or csv", err=True)
        raise typer.Exit(2)


def _moment(option: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError as error:
        typer.echo(f"error: {option}: {text!r} is not an ISO 8601 date and time", err=True)
        raise typer.Exit(2) from error


def _write_lines(lines: Iterable[str]) -> None:
    for line in lines:
        sys.stdout.write(line)


def _write_json_array(entries: Iterable[dict[str, Any]]) -> None:
    sys.stdout.write("[")
    for index, entry in enumerate(entries):
        sys.stdout.write(("," if index else "") + "\n  " + json.dumps(entry, default=str))
    sys.stdout.write("\n]\n")
