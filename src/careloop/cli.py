"""`careloop serve | worker | migrate | demo | user add | token create | workflows | audit`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from careloop.bootstrap import App, build, migrate
from careloop.cli_keys import keys_cli
from careloop.config import Settings
from careloop.domain.access import SYSTEM_ACTOR
from careloop.domain.errors import CareloopError

cli = typer.Typer(
    help="careloop: governed referral coordination",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
user_cli = typer.Typer(help="Manage users", no_args_is_help=True)
token_cli = typer.Typer(help="Manage API tokens", no_args_is_help=True)
workflows_cli = typer.Typer(help="Workflow definitions", no_args_is_help=True)
audit_cli = typer.Typer(help="The audit log", no_args_is_help=True)
cli.add_typer(user_cli, name="user")
cli.add_typer(token_cli, name="token")
cli.add_typer(workflows_cli, name="workflows")
cli.add_typer(audit_cli, name="audit")
cli.add_typer(keys_cli, name="keys")


@contextmanager
def _app(check_migrated: bool = True) -> Iterator[App]:
    try:
        app = build(Settings(), check_migrated=check_migrated)
    except CareloopError as error:
        typer.echo(f"error: {error.detail}", err=True)
        raise typer.Exit(2) from error
    try:
        yield app
    finally:
        app.engine.dispose()


@cli.command("migrate")
def migrate_command() -> None:
    """Create or upgrade the database schema and store the shipped workflow definitions."""
    with _app(check_migrated=False) as app:
        revision, stored = migrate(app)
        typer.echo(f"database at migration {revision}")
        for name in stored:
            typer.echo(f"stored {name}")


@cli.command()
def serve(
    demo: Annotated[bool, typer.Option(help="migrate and load demo data first if empty")] = False,
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
) -> None:
    """Run the API and, in-process, the automation worker on the configured database."""
    import uvicorn

    from careloop.api.app import create_app
    from careloop.bootstrap import build_worker, settle_heap

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if demo:
        _load_demo_if_empty()
    with _app() as app:
        runner = build_worker(app) if app.settings.run_worker else None
        api = create_app(app)
        settle_heap()
        if runner is not None:
            runner.start()
        try:
            uvicorn.run(
                api,
                host=host or app.settings.host,
                port=port or app.settings.port,
                log_level="warning",
            )
        finally:
            if runner is not None:
                runner.stop()


@cli.command()
def worker() -> None:
    """Run the automation worker alone: outbox relay, rules, timers, webhook deliveries.
    Start as many as you like against PostgreSQL; stop with SIGTERM or Ctrl-C."""
    import signal

    from careloop.bootstrap import build_worker, settle_heap

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with _app() as app:
        runner = build_worker(app)
        settle_heap()
        signal.signal(signal.SIGTERM, lambda *_: runner.stop())
        runner.start()
        try:
            runner.wait()
        except KeyboardInterrupt:
            runner.stop()


@cli.command()
def demo(
    referrals: Annotated[int, typer.Option(help="how many referrals")] = 500,
    seed: Annotated[int, typer.Option(help="random seed")] = 7,
) -> None:
    """Migrate and load a realistic synthetic network; prints how to sign in."""
    from careloop.demo import load_demo

    with _app(check_migrated=False) as app:
        migrate(app)
        summary = load_demo(app, referrals=referrals, seed=seed)
        typer.echo(summary)


def _load_demo_if_empty() -> None:
    from careloop.demo import load_demo

    with _app(check_migrated=False) as app:
        migrate(app)
        with app.deps.uow() as uow:
            has_users = uow.accounts.find_user("admin") is not None
        if not has_users:
            typer.echo(load_demo(app, referrals=500, seed=7))
        else:
            typer.echo("demo data already loaded; sign in as before (see README)")


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


@user_cli.command("add")
def user_add(
    username: str,
    roles: Annotated[str, typer.Option(help="comma-separated roles")],
    display_name: Annotated[str, typer.Option()] = "",
    password: Annotated[
        str | None, typer.Option(help="omit for token-only or single sign-on users")
    ] = None,
    organisation: Annotated[str, typer.Option()] = "",
    locations: Annotated[str, typer.Option(help="comma-separated clinics; * = all")] = "",
    teams: Annotated[str, typer.Option(help="comma-separated teams")] = "",
    manager: Annotated[str | None, typer.Option(help="the user's manager")] = None,
) -> None:
    """Add a user with roles and where they work."""
    from careloop.services.accounts import add_user

    with _app() as app:
        try:
            user_id = add_user(
                app.deps,
                SYSTEM_ACTOR,
                app.hashing,
                username,
                display_name,
                _split(roles) or [],
                password,
                organisation=organisation,
                locations=_split(locations) or [],
                teams=_split(teams) or [],
                manager=manager,
            )
        except CareloopError as error:
            typer.echo(f"error: {error.detail}", err=True)
            raise typer.Exit(2) from error
        typer.echo(f"user {username} created (id {user_id})")


@user_cli.command("roles")
def user_roles(
    username: str,
    roles: Annotated[str | None, typer.Option(help="comma-separated roles")] = None,
    locations: Annotated[str | None, typer.Option(help="comma-separated clinics")] = None,
    teams: Annotated[str | None, typer.Option(help="comma-separated teams")] = None,
) -> None:
    """Change a user's roles, locations or teams (audited with before and after)."""
    from careloop.services.accounts import AccessChange, change_access

    change = AccessChange(roles=_split(roles), locations=_split(locations), teams=_split(teams))
    with _app() as app:
        try:
            after = change_access(app.deps, SYSTEM_ACTOR, username, change)
        except CareloopError as error:
            typer.echo(f"error: {error.detail}", err=True)
            raise typer.Exit(2) from error
        typer.echo(
            f"{username}: roles {','.join(after['roles'])}; locations "
            f"{','.join(after['locations'])}; teams {','.join(after['teams'])}"
        )


@token_cli.command("create")
def token_create(
    username: str,
    name: Annotated[str, typer.Option(help="what the token is for")] = "cli",
    days: Annotated[
        int, typer.Option(help="days until expiry; 0 = the maximum lifetime")
    ] = 90,
    scopes: Annotated[
        str | None, typer.Option(help="comma-separated scopes; omit for the full roles")
    ] = None,
) -> None:
    """Create an API token; it is shown once and stored only as a digest."""
    from careloop.services.tokens import create_token

    with _app() as app:
        try:
            token = create_token(
                app.deps,
                SYSTEM_ACTOR,
                username,
                name,
                timedelta(days=days) if days else None,
                scopes=_split(scopes),
                policy=app.authentication.policy,
            )
        except CareloopError as error:
            typer.echo(f"error: {error.detail}", err=True)
            raise typer.Exit(2) from error
        typer.echo(token)


@token_cli.command("rotate")
def token_rotate(token_id: int) -> None:
    """A new secret for a token; the old one works for the grace period, then never."""
    from careloop.services.tokens import rotate_token

    with _app() as app:
        try:
            issued, old_until = rotate_token(
                app.deps, SYSTEM_ACTOR, token_id, policy=app.authentication.policy
            )
        except CareloopError as error:
            typer.echo(f"error: {error.detail}", err=True)
            raise typer.Exit(2) from error
        typer.echo(issued.token)
        typer.echo(f"token {token_id} stops working at {old_until.isoformat()}", err=True)


@workflows_cli.command("validate")
def workflows_validate(path: Path) -> None:
    """Validate a workflow definition file; errors name the file, the line and the problem."""
    from careloop.adapters.definitions import load_workflow_file

    try:
        workflow = load_workflow_file(path)
    except CareloopError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from error
    except OSError as error:
        typer.echo(f"{path}: {error.strerror}", err=True)
        raise typer.Exit(1) from error
    typer.echo(
        f"{path}: ok ({workflow.key} v{workflow.version}, {len(workflow.states)} states, "
        f"{len(workflow.transitions)} transitions)"
    )


@workflows_cli.command("list")
def workflows_list() -> None:
    """List stored workflow definitions."""
    with _app() as app:
        for row in app.deps.workflows.list():
            typer.echo(f"{row['key']}\tv{row['version']}\t{row['case_type']}\t{row['source_name']}")


@audit_cli.command("verify")
def audit_verify() -> None:
    """Check every hash chain of the audit log; names the first bad entry."""
    from careloop.adapters.db.audit_store import verify_audit_log

    with _app() as app:
        results = verify_audit_log(app.engine)
        total = sum(r.entries_checked for r in results)
        bad = [r for r in results if not r.ok]
        if bad:
            for result in bad:
                assert result.first_bad is not None
                chain, seq = result.first_bad
                typer.echo(f"TAMPERED: chain {chain} entry {seq}: {result.problem}", err=True)
            raise typer.Exit(1)
        typer.echo(f"audit log intact: {total} entries in {len(results)} chains")


def main() -> None:
    try:
        cli()
    except CareloopError as error:
        # A refused definition, an unknown id...: the message names the problem.
        typer.echo(f"error: {error.detail}", err=True)
        raise SystemExit(1) from error


def _add_automation_commands() -> None:
    from careloop.cli_automation import dead_letters_cli, definitions_cli

    for kind in ("rules", "routing", "calendars"):
        cli.add_typer(definitions_cli(kind), name=kind)
    cli.add_typer(dead_letters_cli, name="dead-letters")


_add_automation_commands()


def _add_governance_commands() -> None:
    from careloop.cli_governance import audit_report_command, governance_cli

    cli.add_typer(governance_cli, name="governance")
    audit_cli.command("report")(audit_report_command)


_add_governance_commands()


if __name__ == "__main__":
    main()
