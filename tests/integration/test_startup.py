"""The server refuses an unmigrated database and says what to run."""

import pytest
from typer.testing import CliRunner

from careloop.adapters.db.engine import make_engine
from careloop.adapters.db.migrate import DatabaseNotMigrated, current_revision, head_revision
from careloop.bootstrap import App, build, build_worker
from careloop.cli import cli
from careloop.config import Settings
from careloop.domain.errors import DefinitionInvalid


def test_unmigrated_database_is_refused_with_the_command_to_run(database_url: str) -> None:
    with pytest.raises(DatabaseNotMigrated, match="run `careloop migrate`"):
        build(Settings(database_url=database_url))


def test_migrate_upgrades_and_stores_the_shipped_workflow(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARELOOP_DATABASE_URL", database_url)
    runner = CliRunner()
    result = runner.invoke(cli, ["migrate"])
    assert result.exit_code == 0, result.output
    assert "stored workflow referral-standard v1" in result.output
    engine = make_engine(database_url)
    assert current_revision(engine) == head_revision()
    engine.dispose()
    again = runner.invoke(cli, ["migrate"])
    assert again.exit_code == 0 and "stored workflow" not in again.output
    listed = runner.invoke(cli, ["workflows", "list"])
    assert "referral-standard\tv1\treferral" in listed.output


def test_serve_refuses_an_unmigrated_database(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARELOOP_DATABASE_URL", sqlite_url)
    result = CliRunner().invoke(cli, ["serve", "--port", "1"])
    assert result.exit_code == 2
    assert "run `careloop migrate` first" in result.output


def test_production_refuses_the_embedded_sqlite_default() -> None:
    with pytest.raises(ValueError, match="PostgreSQL"):
        Settings(environment="production")


def test_user_and_token_commands(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARELOOP_DATABASE_URL", sqlite_url)
    runner = CliRunner()
    assert runner.invoke(cli, ["migrate"]).exit_code == 0
    added = runner.invoke(cli, ["user", "add", "nina.nurse", "--roles", "clinical_triage"])
    assert added.exit_code == 0, added.output
    bad = runner.invoke(cli, ["user", "add", "x", "--roles", "wizard"])
    assert bad.exit_code == 2 and "unknown roles ['wizard']" in bad.output
    token = runner.invoke(cli, ["token", "create", "nina.nurse"])
    assert token.exit_code == 0 and token.output.startswith("clp_")


def test_a_worker_compiles_the_active_rules_when_it_starts(sqlite_app: App) -> None:
    """Not on its first batch: an active rule set that no longer compiles (edited in the
    database behind careloop's back) stops the worker at start, naming the rule set."""
    with sqlite_app.engine.begin() as connection:
        changed = connection.exec_driver_sql(
            "UPDATE automation_definitions SET source_text = source_text || ?"
            " WHERE kind = 'rules' AND active",
            (
                "\n  - key: broken\n    trigger: {on: created}\n    when: 'case.nope == 1'"
                "\n    actions: [{set_field: {field: queue, value: x}}]\n",
            ),
        ).rowcount
    assert changed >= 1
    sqlite_app.automation.invalidate()
    with pytest.raises(DefinitionInvalid, match="nope"):
        build_worker(sqlite_app)


def test_the_migrations_build_the_schema_the_code_declares(app: App) -> None:
    """Tables, columns and indexes as adapters/db/tables.py declares them, nothing more
    (an index dropped from the code is dropped by a migration too). Column types are
    left out: SQLite reports its own spellings of them."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from careloop.adapters.db.tables import metadata

    with app.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": False})
        differences = compare_metadata(context, metadata)
    assert differences == []
