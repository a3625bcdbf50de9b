"""`careloop keys generate | status | rotate`: field encryption keys (docs/encryption.md).

Rotation rewrites stored case data in place, a batch per transaction, under an
optimistic check on the case version that does *not* bump the version: the plaintext
is unchanged, so a coordinator editing the case meanwhile must not get a conflict. If
the server saves the case between our read and our write, the version has moved, our
update matches nothing and the case is left as the server wrote it (sealed under the
server's active key). So a run is safe beside running servers and can be repeated or
resumed (``--start-after``) at any point.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import typer
from sqlalchemy import Connection, Row, delete, select, update

from careloop.adapters.db.automation_tables import patient_keys
from careloop.adapters.db.cases import search_text
from careloop.adapters.db.tables import cases
from careloop.adapters.field_crypto import (
    FieldCipher,
    SealedValueError,
    generate_key,
    key_ids_in,
)
from careloop.adapters.patient_matching import FuzzyPatientMatcher
from careloop.bootstrap import App
from careloop.domain.access import SYSTEM_ACTOR
from careloop.domain.matching import PatientKey
from careloop.services.recording import audit

keys_cli = typer.Typer(help="Field encryption keys", no_args_is_help=True)
PLAINTEXT = "plaintext"


@dataclass
class RotationCounts:
    scanned: int = 0  # cases read
    resealed: int = 0  # cases rewritten under the active key
    skipped: int = 0  # changed by someone else meanwhile: left as they wrote it
    last_case_id: int = 0  # resume point for --start-after


@keys_cli.command("generate")
def generate() -> None:
    """Print a new random 256-bit key (base64) for CARELOOP_FIELD_KEYS or
    CARELOOP_FIELD_INDEX_KEY."""
    typer.echo(generate_key())


@keys_cli.command("status")
def status() -> None:
    """Count the encrypted values stored under each key id (and those still plaintext)."""
    from careloop.cli import _app

    with _app() as app:
        counts = count_values_by_key(app)
        configured = app.cipher.key_ids if app.cipher else ()
        active = app.cipher.active_key_id if app.cipher else None
    typer.echo(f"active key: {active or 'none (field encryption is off)'}")
    for key_id, count in sorted(counts.items()):
        note = ""
        if key_id == active:
            note = " (active)"
        elif key_id == PLAINTEXT and active:
            note = " (run `careloop keys rotate` to encrypt)"
        elif key_id != PLAINTEXT:
            note = " (rotate, then retire)" if key_id in configured else " (NOT CONFIGURED)"
        typer.echo(f"{key_id}\t{count} values{note}")
    if not counts:
        typer.echo("no encrypted fields stored")


@keys_cli.command("rotate")
def rotate(
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="cases per commit")] = 500,
    start_after: Annotated[int, typer.Option(help="resume after this case id")] = 0,
) -> None:
    """Re-encrypt every stored value not under the active key (plaintext included)."""
    from careloop.cli import _app

    with _app() as app:
        if app.cipher is None:
            typer.echo("error: field encryption is off: set CARELOOP_FIELD_KEYS", err=True)
            raise typer.Exit(2)
        try:
            counts = rotate_keys(app, batch_size, start_after, _print_progress)
        except SealedValueError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from error
    typer.echo(
        f"rotation to key {app.cipher.active_key_id} done: {counts.scanned} cases read, "
        f"{counts.resealed} re-encrypted, {counts.skipped} changed meanwhile (left as written)"
    )


def _print_progress(counts: RotationCounts) -> None:
    typer.echo(
        f"up to case {counts.last_case_id}: {counts.resealed} re-encrypted of {counts.scanned}"
    )


def count_values_by_key(app: App) -> Counter[str]:
    """Stored values of the encrypted fields per key id; plaintext ones as 'plaintext'."""
    counts: Counter[str] = Counter()
    query = select(cases.c.data).execution_options(yield_per=1000)
    with app.engine.connect() as connection:
        for (data,) in connection.execute(query):
            counts.update(key_id or PLAINTEXT for key_id in key_ids_in(data))
    return counts


def rotate_keys(
    app: App,
    batch_size: int,
    start_after: int = 0,
    progress: Callable[[RotationCounts], None] | None = None,
) -> RotationCounts:
    """Re-encrypt, batch by batch, each case holding a value not under the active key."""
    cipher = app.cipher
    assert cipher is not None, "rotation needs field encryption on"
    _record_run(app, "keys.rotate.start", {"batch_size": batch_size, "start_after": start_after})
    counts = RotationCounts(last_case_id=start_after)
    while True:
        with app.engine.begin() as connection:
            rows = connection.execute(
                select(cases.c.id, cases.c.version, cases.c.data)
                .where(cases.c.id > counts.last_case_id)
                .order_by(cases.c.id)
                .limit(batch_size)
            ).all()
            for row in rows:
                _reseal_case(connection, cipher, row, counts)
        if not rows:
            break
        counts.last_case_id = int(rows[-1].id)
        if progress is not None:
            progress(counts)
    _record_run(app, "keys.rotate.finish", asdict(counts))
    return counts


def _reseal_case(
    connection: Connection, cipher: FieldCipher, row: Row[Any], counts: RotationCounts
) -> None:
    counts.scanned += 1
    stored = dict(row.data)
    resealed = cipher.reseal_data(stored)
    if resealed is None:
        return
    values: dict[str, Any] = {"data": resealed}
    first_sealing = "" in key_ids_in(stored)
    plain = cipher.open_data(stored)
    if first_sealing:
        # Written before encryption was on: the search text still holds the plaintext.
        values["search_text"] = search_text(plain, cipher)
    written = connection.execute(
        update(cases).where(cases.c.id == row.id, cases.c.version == row.version).values(values)
    ).rowcount
    if written != 1:
        counts.skipped += 1
        return
    counts.resealed += 1
    if first_sealing:
        _index_patient_keys(connection, cipher, int(row.id), plain)


def _index_patient_keys(
    connection: Connection, cipher: FieldCipher, case_id: int, plain: dict[str, Any]
) -> None:
    """Replace the duplicate check's plaintext identifier keys with blind index ones."""
    key = PatientKey.from_referral(plain)
    before = FuzzyPatientMatcher().blocking_keys(key)
    after = FuzzyPatientMatcher(index=cipher.blind_index).blocking_keys(key)
    replacements = {k.partition(":")[0]: k for k in after - before}
    for old in before - after:
        where = (patient_keys.c.case_id == case_id, patient_keys.c.key == old)
        new = replacements.get(old.partition(":")[0])
        if new is None:
            connection.execute(delete(patient_keys).where(*where))
        else:
            connection.execute(update(patient_keys).where(*where).values(key=new))


def _record_run(app: App, action: str, detail: dict[str, Any]) -> None:
    assert app.cipher is not None
    now = app.deps.clock.now()
    with app.deps.uow() as uow:
        audit(
            uow,
            SYSTEM_ACTOR,
            action,
            now,
            category="security",
            detail={"active_key": app.cipher.active_key_id, **detail},
        )
        uow.commit()
