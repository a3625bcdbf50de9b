"""`careloop audit verify` detects altered, inserted and deleted entries on both databases."""

import threading

import pytest
from sqlalchemy import func, select, text
from typer.testing import CliRunner

from careloop.adapters.db.audit_store import verify_audit_log
from careloop.adapters.db.tables import audit_log
from careloop.bootstrap import App, build
from careloop.cli import cli
from careloop.config import Settings
from careloop.services import queries
from careloop.services.cases import create_referral
from careloop.services.ports import ManualClock
from careloop.services.recording import audit
from careloop.services.referral_input import validate_referral
from tests.conftest import ADMIN, INTAKE, START, referral_payload


def _fill(app: App, n: int = 6) -> None:
    for _ in range(n):
        case, _ = create_referral(app.deps, INTAKE, validate_referral(referral_payload()))
        queries.get_case(app.deps, ADMIN, case.id)


def _tamper(app: App, statement: str) -> None:
    """Simulate an attacker with database-owner rights who bypasses the triggers."""
    with app.engine.begin() as connection:
        if app.engine.dialect.name == "postgresql":
            connection.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
            connection.execute(text(statement))
            connection.execute(text("ALTER TABLE audit_log ENABLE TRIGGER USER"))
        else:
            connection.execute(text("DROP TRIGGER audit_log_no_update"))
            connection.execute(text("DROP TRIGGER audit_log_no_delete"))
            connection.execute(text(statement))


def _busiest_chain(app: App) -> int:
    with app.engine.connect() as connection:
        return int(
            connection.execute(
                select(audit_log.c.chain)
                .group_by(audit_log.c.chain)
                .order_by(func.count().desc())
                .limit(1)
            ).scalar_one()
        )


def _run_verify(app: App, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.setenv(
        "CARELOOP_DATABASE_URL", str(app.engine.url.render_as_string(hide_password=False))
    )
    result = CliRunner().invoke(cli, ["audit", "verify"])
    return result.exit_code, result.output


def test_intact_log_verifies(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    _fill(app)
    code, output = _run_verify(app, monkeypatch)
    assert code == 0, output
    assert "audit log intact: 12 entries" in output


@pytest.mark.parametrize(
    "attack, expected",
    [
        (
            "UPDATE audit_log SET actor_name = 'mallory' WHERE chain = {c} AND seq = 2",
            "entry 2: entry content does not match its hash",
        ),
        ("DELETE FROM audit_log WHERE chain = {c} AND seq = 2", "entry 3: expected seq 2"),
        (
            "INSERT INTO audit_log (chain, seq, occurred_at, actor_id, actor_name, action, outcome,"
            " data_category, source_address, reason, detail, prev_hash, hash)"
            " SELECT chain, 0, occurred_at, actor_id, actor_name, 'case.read', outcome,"
            " data_category, source_address, reason, detail, prev_hash, hash FROM audit_log"
            " WHERE chain = {c} AND seq = 1",
            "entry 0: expected seq 1",
        ),
    ],
)
def test_tampering_is_detected_and_the_first_bad_entry_named(
    app: App, monkeypatch: pytest.MonkeyPatch, attack: str, expected: str
) -> None:
    _fill(app, 30)  # enough that the busiest of the 16 chains has entries past seq 2
    chain = _busiest_chain(app)
    _tamper(app, attack.format(c=chain))
    code, output = _run_verify(app, monkeypatch)
    assert code == 1
    assert f"TAMPERED: chain {chain} {expected}" in output


def test_truncated_tail_is_detected(app: App) -> None:
    _fill(app)
    chain = _busiest_chain(app)
    _tamper(
        app,
        f"DELETE FROM audit_log WHERE chain = {chain} AND seq = "
        f"(SELECT max(seq) FROM audit_log WHERE chain = {chain})",
    )
    bad = [r for r in verify_audit_log(app.engine) if not r.ok]
    assert len(bad) == 1 and "deleted from the end" in bad[0].problem


def test_concurrent_writers_keep_every_chain_valid(app: App) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            _fill(app, 10)
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    results = verify_audit_log(app.engine)
    assert all(r.ok for r in results)
    assert sum(r.entries_checked for r in results) == 80


def _one_chain_app(url: str, clock: ManualClock) -> App:
    # A second App on the same database is a second writer process as far as the audit
    # log can tell: its own engine, its own memory of where it left each chain.
    return build(
        Settings(database_url=url, environment="test", audit_chains=1),
        clock,
        check_migrated=False,
    )


def test_writers_sharing_a_chain_append_after_each_other_not_over_each_other(
    app: App, database_url: str, clock: ManualClock
) -> None:
    other = _one_chain_app(database_url, clock)
    ours = _one_chain_app(database_url, clock)
    try:
        for writer in (ours, other, ours, ours, other, ours):
            _fill(writer, 1)
    finally:
        other.engine.dispose()
        ours.engine.dispose()
    results = verify_audit_log(app.engine)
    assert [(r.ok, r.entries_checked) for r in results] == [(True, 12)]


def test_an_append_rolled_back_does_not_leave_a_gap_in_the_chain(
    app: App, database_url: str, clock: ManualClock
) -> None:
    writer = _one_chain_app(database_url, clock)
    try:
        _fill(writer, 1)
        with writer.deps.uow() as uow:  # never committed
            audit(uow, ADMIN, "case.read", clock.now())
        _fill(writer, 1)
    finally:
        writer.engine.dispose()
    results = verify_audit_log(app.engine)
    assert [(r.ok, r.entries_checked) for r in results] == [(True, 4)]


_ODD_DETAILS: list[dict[str, object]] = [
    {"plain": "text", "n": 2**40, "list": [1, None, True, "x"], "nested": {"b": 1, "a": [{}]}},
    {"é": "naïve café ☕ \u2028", "ctrl": '\x00\x1f"\\', "emoji": "\U0001f600"},
    {"big": 2**70, "neg": -(2**63) - 1},  # past 64 bits: orjson refuses them
    {"float": 0.1, "exp": 1e-7, "inf_like": 1e308},
    {"when": START},  # orjson would write these, differently from default=str
    {"day": START.date(), "tuple": (1, "a")},
    {"set": {"only"}},
    {"z": 1, "a": {"y": 2, "b": 3}},  # keys out of order
]


@pytest.mark.parametrize("deferred", [False, True])
def test_details_of_every_shape_read_back_as_hashed(app: App, deferred: bool) -> None:
    """The stored detail is read back and hashed again by verification: plain JSON is
    stored in orjson's text, anything else as json.dumps wrote it, and both must load
    as what was hashed, through a statement and through a COPY alike."""
    case, _ = create_referral(app.deps, INTAKE, validate_referral(referral_payload()))
    with app.deps.uow() as work:
        work.optimistic = deferred  # deferred: written at commit, many rows at once
        for n, detail in enumerate(_ODD_DETAILS * 2):
            audit(work, ADMIN, f"test.detail.{n}", START, case=case, detail=dict(detail))
        work.commit()
    results = verify_audit_log(app.engine)
    assert all(result.ok for result in results), [r for r in results if not r.ok]
    with app.deps.read_uow() as work:
        stored = {e["action"]: e["detail"] for e in work.audit.for_case(case.id)}
    assert stored["test.detail.0"] == _ODD_DETAILS[0]
    assert stored["test.detail.1"] == _ODD_DETAILS[1]
    assert stored["test.detail.2"] == {"big": 2**70, "neg": -(2**63) - 1}
    assert stored["test.detail.4"] == {"when": str(START)}  # as default=str wrote it
