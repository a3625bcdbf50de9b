"""The audit log's hash chain: canonical encoding, hashing and verification.

Each entry's SHA-256 covers the previous entry's hash and a canonical encoding of the
entry itself, so altering, inserting or deleting any entry breaks every later link.
Entries are spread over a few independent chains so concurrent writers rarely wait
for one another; each chain has a head (last seq and hash) so a truncated tail is
detected too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class AuditRecord:
    """What happened, before it is placed on a chain."""

    occurred_at: datetime
    actor_id: int
    actor_name: str
    action: str
    outcome: str = "success"
    case_id: int | None = None
    patient_ref: str | None = None
    data_category: str = "administrative"
    source_address: str = ""
    reason: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditEntry:
    chain: int
    seq: int
    record: AuditRecord
    prev_hash: str
    hash: str


_RECORD_FIELDS = tuple(f.name for f in fields(AuditRecord))


def record_fields(record: AuditRecord) -> dict[str, Any]:
    """The record's fields by name: what is hashed, stored and read back."""
    return {name: getattr(record, name) for name in _RECORD_FIELDS}


def canonical_encoding(chain: int, seq: int, record: AuditRecord) -> bytes:
    body = {
        **record_fields(record),
        "chain": chain,
        "seq": seq,
        "occurred_at": record.occurred_at.isoformat(timespec="microseconds"),
    }
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode()


def compute_hash(prev_hash: str, chain: int, seq: int, record: AuditRecord) -> str:
    digest = hashlib.sha256(prev_hash.encode("ascii"))
    digest.update(canonical_encoding(chain, seq, record))
    return digest.hexdigest()


def chain_entry(chain: int, prev_seq: int, prev_hash: str, record: AuditRecord) -> AuditEntry:
    seq = prev_seq + 1
    return AuditEntry(chain, seq, record, prev_hash, compute_hash(prev_hash, chain, seq, record))


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries_checked: int
    first_bad: tuple[int, int] | None = None  # (chain, seq)
    problem: str = ""


def verify_chain(
    chain: int, entries: Iterable[AuditEntry], head: tuple[int, str] | None
) -> VerifyResult:
    """Walk one chain in seq order; ``head`` is the stored (last seq, last hash)."""
    expected_seq, expected_prev = 1, GENESIS_HASH
    checked = 0
    for entry in entries:
        checked += 1
        where = (chain, entry.seq)
        if entry.seq != expected_seq:
            return VerifyResult(
                False,
                checked,
                where,
                f"expected seq {expected_seq}: an entry was deleted or inserted",
            )
        if entry.prev_hash != expected_prev:
            return VerifyResult(False, checked, where, "previous-hash link is broken")
        if compute_hash(entry.prev_hash, chain, entry.seq, entry.record) != entry.hash:
            return VerifyResult(False, checked, where, "entry content does not match its hash")
        expected_seq, expected_prev = entry.seq + 1, entry.hash
    last_seq = expected_seq - 1
    if head is not None and (head[0], head[1]) != (last_seq, expected_prev):
        return VerifyResult(
            False,
            checked,
            (chain, last_seq + 1),
            f"chain head says seq {head[0]} but the log ends at {last_seq}: "
            "entries were deleted from the end",
        )
    return VerifyResult(True, checked)
