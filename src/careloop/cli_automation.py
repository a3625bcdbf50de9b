"""`careloop rules|routing|calendars ...` and `careloop dead-letters ...`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from careloop.domain.access import SYSTEM_ACTOR
from careloop.services import automation_admin as admin

dead_letters_cli = typer.Typer(
    help="Events and deliveries whose retries ran out", no_args_is_help=True
)


def definitions_cli(kind: str) -> typer.Typer:
    """list / show / validate / store / activate for one kind of automation definition."""
    from careloop.cli import _app

    group = typer.Typer(help=f"Automation {kind} definitions", no_args_is_help=True)

    @group.command("list")
    def list_versions() -> None:
        """Stored versions; the active one is marked."""
        with _app() as app:
            for row in app.automation.stored(kind):
                mark = "active" if row["active"] else ""
                typer.echo(f"{row['key']} v{row['version']} {mark} {row['source_name']}".rstrip())

    @group.command("show")
    def show(key: str, version: int) -> None:
        """Print a stored version's text."""
        with _app() as app:
            typer.echo(app.automation.source_of(kind, key, version)["source_text"])

    @group.command("validate")
    def validate(path: Path) -> None:
        """Check a file against the active definitions; exit 1 listing every problem."""
        with _app() as app:
            found, key, version = app.automation.validate(path.read_text("utf-8"), str(path))
        typer.echo(f"{path}: valid {found} {key} v{version}")

    @group.command("store")
    def store(
        path: Path, activate: Annotated[bool, typer.Option(help="activate it too")] = False
    ) -> None:
        """Store a new version (immutable once stored)."""
        with _app() as app:
            result = admin.store_definition(
                app.deps, app.automation, SYSTEM_ACTOR, path.read_text("utf-8"), str(path), activate
            )
        typer.echo(json.dumps(result))

    @group.command("activate")
    def activate(
        key: str,
        version: int,
        as_user: Annotated[
            str | None, typer.Option("--as", help="the administrator proposing it")
        ] = None,
    ) -> None:
        """Propose making a stored version the active one; it takes effect when a second
        administrator approves it (`careloop governance approve ID --as NAME`)."""
        from careloop.cli_governance import operator

        with _app() as app:
            result = admin.activate_definition(
                app.deps, operator(app, as_user), kind, key, version
            )
        typer.echo(f"{kind} {key} v{version}: {result['detail']}")

    return group


@dead_letters_cli.command("list")
def list_dead_letters() -> None:
    """Dead-lettered outbox events and webhook deliveries."""
    from careloop.cli import _app

    with _app() as app:
        found = admin.list_dead_letters(app.deps, SYSTEM_ACTOR, 500)
    for event in found["events"]:
        typer.echo(
            f"event {event['id']} {event['event_type']} case={event['case_id']} "
            f"attempts={event['attempts']} error={event['last_error']}"
        )
    for delivery in found["deliveries"]:
        typer.echo(
            f"delivery {delivery['id']} {delivery['event_type']} "
            f"subscription={delivery['subscription_id']} error={delivery['last_error']}"
        )
    if not found["events"] and not found["deliveries"]:
        typer.echo("no dead letters")


@dead_letters_cli.command("replay")
def replay(
    kind: Annotated[str, typer.Argument(help="events or deliveries")],
    ids: Annotated[list[int] | None, typer.Argument(help="ids; all when omitted")] = None,
) -> None:
    """Put dead letters back in line with a fresh retry schedule."""
    from careloop.cli import _app

    with _app() as app:
        count = admin.replay_dead_letters(app.deps, SYSTEM_ACTOR, kind, ids or None)
    typer.echo(f"replayed {count} {kind}")
