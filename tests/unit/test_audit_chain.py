"""The hash chain detects altered, inserted and deleted entries (no database)."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from careloop.domain.audit import GENESIS_HASH, AuditEntry, AuditRecord, chain_entry, verify_chain

T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)


def _chain(n: int) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    prev_seq, prev_hash = 0, GENESIS_HASH
    for i in range(n):
        record = AuditRecord(
            occurred_at=T0 + timedelta(seconds=i),
            actor_id=1,
            actor_name="ada",
            action="case.read",
            case_id=i,
            patient_ref=f"MRN{i}",
            data_category="demographics",
            source_address="10.0.0.1",
            detail={"i": i},
        )
        entry = chain_entry(3, prev_seq, prev_hash, record)
        entries.append(entry)
        prev_seq, prev_hash = entry.seq, entry.hash
    return entries


def _head(entries: list[AuditEntry]) -> tuple[int, str]:
    return entries[-1].seq, entries[-1].hash


def test_intact_chain_verifies() -> None:
    entries = _chain(5)
    result = verify_chain(3, entries, _head(entries))
    assert result.ok and result.entries_checked == 5


def test_altered_entry_is_named() -> None:
    entries = _chain(5)
    entries[2] = replace(entries[2], record=replace(entries[2].record, actor_name="mallory"))
    result = verify_chain(3, entries, _head(entries))
    assert not result.ok and result.first_bad == (3, 3)
    assert "does not match its hash" in result.problem


def test_deleted_entry_in_the_middle_is_named() -> None:
    entries = _chain(5)
    del entries[1]
    result = verify_chain(3, entries, _head(entries))
    assert not result.ok and result.first_bad == (3, 3)


def test_deleted_tail_is_detected_through_the_head() -> None:
    entries = _chain(5)
    head = _head(entries)
    result = verify_chain(3, entries[:-2], head)
    assert not result.ok and result.first_bad == (3, 4)


def test_inserted_entry_is_named() -> None:
    entries = _chain(4)
    forged = chain_entry(3, 1, entries[0].hash, replace(entries[1].record, action="case.delete"))
    entries.insert(1, forged)
    result = verify_chain(3, entries, _head(entries))
    assert not result.ok and result.first_bad is not None
    assert result.first_bad[1] in (2, 3)
