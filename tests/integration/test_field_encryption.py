"""Field encryption at rest on real SQLite and PostgreSQL: the tables hold no plaintext
member IDs, services see plaintext, search and duplicate detection keep working, and
rotation moves every value to the new key so the old one can be retired."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from careloop.adapters.db.automation_tables import patient_keys
from careloop.adapters.db.cases import CaseFilter
from careloop.adapters.db.tables import audit_log, cases
from careloop.adapters.field_crypto import FieldCipher, SealedValueError, build_cipher, decode_key
from careloop.bootstrap import App, build_worker
from careloop.cli import cli
from careloop.cli_keys import RotationCounts, _reseal_case, rotate_keys
from careloop.services import queries
from careloop.services.cases import create_referral, update_case
from careloop.services.ports import ManualClock
from careloop.services.referral_input import ReferralChanges, validate_referral
from tests.conftest import ADMIN, INTAKE, make_app, referral_payload

K1 = base64.b64encode(bytes(range(32))).decode()
K2 = base64.b64encode(bytes(range(32, 64))).decode()
INDEX = base64.b64encode(bytes(range(64, 96))).decode()
MEMBER_IDS = ("M55501234", "P1234567")  # patient.member_id, payer.member_id


@pytest.fixture
def apps(database_url: str, clock: ManualClock) -> Iterator[dict[str, App]]:
    """One database seen by differently configured processes: 'plain' (encryption off),
    'k1' (key k1 only), 'k2+k1' (rotated: k2 active) and 'k2' (k1 retired)."""
    keyrings = {"k1": f"k1:{K1}", "k2+k1": f"k2:{K2},k1:{K1}", "k2": f"k2:{K2}"}
    built = {"plain": make_app(database_url, clock)}
    for name, keys in keyrings.items():
        built[name] = make_app(database_url, clock, field_keys=keys, field_index_key=INDEX)
    yield built
    for app in built.values():
        app.engine.dispose()


def _create(app: App, **overrides: Any) -> int:
    case, _ = create_referral(app.deps, INTAKE, validate_referral(referral_payload(**overrides)))
    return case.id


def _stored(app: App) -> list[dict[str, Any]]:
    """The cases table as plain SQL reads it: data as the JSON text on disk."""
    query = "SELECT id, version, CAST(data AS TEXT) AS data, search_text FROM cases ORDER BY id"
    with app.engine.connect() as connection:
        return [dict(row) for row in connection.execute(text(query)).mappings()]


def _key_ids(app: App) -> set[str]:
    found = set()
    for row in _stored(app):
        data = json.loads(row["data"])
        for value in (data["patient"]["member_id"], data["payer"]["member_id"]):
            found.add(value.split(":")[2] if value.startswith("enc:v1:") else "plaintext")
    return found


def _invoke(
    monkeypatch: pytest.MonkeyPatch, url: str, keys: str | None, *args: str
) -> tuple[int, str]:
    monkeypatch.setenv("CARELOOP_DATABASE_URL", url)
    monkeypatch.setenv("CARELOOP_ENVIRONMENT", "test")
    for name, value in (("CARELOOP_FIELD_KEYS", keys), ("CARELOOP_FIELD_INDEX_KEY", INDEX)):
        if keys is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value or "")
    result = CliRunner().invoke(cli, ["keys", *args])
    return result.exit_code, result.output


def test_with_keys_the_table_holds_no_plaintext_member_ids_while_services_see_them(
    apps: dict[str, App],
) -> None:
    app = apps["k1"]
    case_id = _create(app)
    case, _ = queries.get_case(app.deps, ADMIN, case_id)
    update_case(app.deps, ADMIN, case_id, case.version, ReferralChanges(urgency="routine"))
    for row in _stored(app):
        for member_id in MEMBER_IDS:
            assert member_id not in row["data"] and member_id.lower() not in row["search_text"]
        assert "MRN100234" in row["data"]  # the MRN stays plaintext (docs/encryption.md)
    assert _key_ids(app) == {"k1"}
    read, _ = queries.get_case(app.deps, ADMIN, case_id)
    assert read.data["patient"]["member_id"] == "M55501234"
    assert read.data["payer"]["member_id"] == "P1234567"
    assert read.data["urgency"] == "routine" and read.version == 2


def test_encryption_off_stores_member_ids_in_plaintext_as_before(apps: dict[str, App]) -> None:
    _create(apps["plain"])
    (row,) = _stored(apps["plain"])
    assert all(member_id in row["data"] for member_id in MEMBER_IDS)
    assert "m55501234" in row["search_text"]


def test_search_by_member_id_finds_the_case_through_its_blind_index(
    apps: dict[str, App],
) -> None:
    app = apps["k1"]
    wanted = _create(app)
    _create(app, patient={**referral_payload()["patient"], "member_id": "M77700001"})  # type: ignore[dict-item]

    def found(words: str) -> list[int]:
        rows, _ = queries.list_cases(app.deps, ADMIN, CaseFilter(text=words), 50, None)
        return [row["id"] for row in rows]

    assert found("M55501234") == [wanted]
    assert found("m-55501234") == [wanted]  # the same identifier, spelt differently
    assert found("okafor M55501234") == [wanted]
    assert found("5550") == []  # exact value only: the token hides every substring
    assert len(found("okafor")) == 2


def test_duplicate_detection_compares_member_ids_without_storing_them_in_plaintext(
    apps: dict[str, App],
) -> None:
    app = apps["k1"]
    first = _create(app)
    # A different given name alone is below the threshold; the same member ID lifts it.
    patient = {**referral_payload()["patient"], "given_name": "Ngozi"}
    del patient["mrn"]  # type: ignore[attr-defined]
    second = _create(app, patient=patient)
    worker = build_worker(app)
    try:
        worker.run_until_idle()
    finally:
        worker.sender.close()  # type: ignore[attr-defined]
    with app.deps.read_uow() as work:
        links = [link["other_case_id"] for link in work.automation.links(second)]
        runs = work.automation.runs_for_case(second)
    assert links == [first], runs
    with app.engine.connect() as connection:
        keys = connection.execute(select(patient_keys.c.key)).scalars().all()
    assert keys and not any("55501234" in key for key in keys)


def test_rotation_re_encrypts_under_the_new_key_and_the_old_key_can_then_be_retired(
    apps: dict[str, App], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [_create(apps["k1"]) for _ in range(5)]
    versions = {row["id"]: row["version"] for row in _stored(apps["k1"])}
    code, output = _invoke(monkeypatch, database_url, f"k2:{K2},k1:{K1}", "status")
    assert code == 0 and "k1\t10 values (rotate, then retire)" in output, output
    code, output = _invoke(
        monkeypatch, database_url, f"k2:{K2},k1:{K1}", "rotate", "--batch-size", "2"
    )
    assert code == 0, output
    assert "up to case" in output and "5 cases read, 5 re-encrypted, 0 changed" in output
    assert _key_ids(apps["k1"]) == {"k2"}
    # Rotation changes no plaintext, so it leaves the versions (and editors) alone.
    assert {row["id"]: row["version"] for row in _stored(apps["k1"])} == versions
    code, output = _invoke(monkeypatch, database_url, f"k2:{K2}", "status")
    assert code == 0 and "k2\t10 values (active)" in output and "k1" not in output
    retired = apps["k2"]
    assert [
        queries.get_case(retired.deps, ADMIN, i)[0].data["patient"]["member_id"] for i in ids
    ] == ["M55501234"] * 5
    with apps["k2"].engine.connect() as connection:
        entries = connection.execute(
            select(audit_log.c.action, audit_log.c.data_category, audit_log.c.detail)
            .where(audit_log.c.action.like("keys.rotate%"))
            .order_by(audit_log.c.occurred_at, audit_log.c.seq)
        ).all()
    assert [(e.action, e.data_category) for e in entries] == [
        ("keys.rotate.start", "security"),
        ("keys.rotate.finish", "security"),
    ]
    assert json.loads(entries[1].detail)["resealed"] == 5


def test_a_case_edited_from_before_the_rotation_saves_without_a_conflict(
    apps: dict[str, App],
) -> None:
    case_id = _create(apps["k1"])
    before, _ = queries.get_case(apps["k1"].deps, ADMIN, case_id)
    assert rotate_keys(apps["k2+k1"], batch_size=10).resealed == 1
    saved = update_case(
        apps["k2+k1"].deps, ADMIN, case_id, before.version, ReferralChanges(urgency="routine")
    )
    assert saved.version == before.version + 1
    assert _key_ids(apps["k2"]) == {"k2"}


def test_rotation_leaves_a_case_saved_meanwhile_as_the_server_wrote_it(
    apps: dict[str, App],
) -> None:
    case_id = _create(apps["k1"])
    with apps["k1"].engine.connect() as connection:
        stale = connection.execute(
            select(cases.c.id, cases.c.version, cases.c.data).where(cases.c.id == case_id)
        ).one()
    update_case(
        apps["k2+k1"].deps, ADMIN, case_id, stale.version, ReferralChanges(urgency="routine")
    )
    written = _stored(apps["k1"])
    counts = RotationCounts()
    with apps["k2+k1"].engine.begin() as connection:
        _reseal_case(connection, _cipher(f"k2:{K2},k1:{K1}"), stale, counts)
    assert (counts.resealed, counts.skipped) == (0, 1)
    assert _stored(apps["k1"]) == written


def test_switching_encryption_on_later_encrypts_old_cases_and_their_search_and_match_keys(
    apps: dict[str, App], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _create(apps["plain"])
    worker = build_worker(apps["plain"])
    try:
        worker.run_until_idle()  # the duplicate check indexes the plaintext member ID
    finally:
        worker.sender.close()  # type: ignore[attr-defined]
    app = apps["k1"]
    assert queries.get_case(app.deps, ADMIN, old)[0].data["patient"]["member_id"] == "M55501234"
    code, output = _invoke(monkeypatch, database_url, f"k1:{K1}", "status")
    assert code == 0
    assert "plaintext\t2 values (run `careloop keys rotate` to encrypt)" in output, output
    assert rotate_keys(app, batch_size=10).resealed == 1
    (row,) = _stored(app)
    assert not any(m in row["data"] or m.lower() in row["search_text"] for m in MEMBER_IDS)
    with app.engine.connect() as connection:
        keys = connection.execute(select(patient_keys.c.key)).scalars().all()
    assert f"member:{_cipher(f'k1:{K1}').blind_index('M55501234')}" in keys
    assert not any("55501234" in key for key in keys)
    rows, _ = queries.list_cases(app.deps, ADMIN, CaseFilter(text="M55501234"), 10, None)
    assert [r["id"] for r in rows] == [old]


def test_a_value_under_a_key_no_longer_configured_is_refused_by_name(
    apps: dict[str, App], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    case_id = _create(apps["k1"])
    with pytest.raises(SealedValueError, match="sealed with key 'k1', which is not in"):
        queries.get_case(apps["k2"].deps, ADMIN, case_id)
    code, output = _invoke(monkeypatch, database_url, f"k2:{K2}", "rotate")
    assert code == 1 and "key 'k1', which is not in CARELOOP_FIELD_KEYS" in output
    code, output = _invoke(monkeypatch, database_url, f"k2:{K2}", "status")
    assert "k1\t2 values (NOT CONFIGURED)" in output


def test_rotate_refuses_to_run_with_encryption_off_and_generate_prints_a_key(
    apps: dict[str, App], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, output = _invoke(monkeypatch, database_url, None, "rotate")
    assert code == 2 and "field encryption is off: set CARELOOP_FIELD_KEYS" in output
    code, output = _invoke(monkeypatch, database_url, None, "generate")
    assert code == 0 and len(decode_key(output.strip())) == 32


def _cipher(keys: str) -> FieldCipher:
    cipher = build_cipher(keys, INDEX)
    assert cipher is not None
    return cipher
