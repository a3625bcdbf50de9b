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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

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


def record_fields(record: AuditRecord) -> dict[str, Any]:
    """The record's fields by name: what is hashed, stored and read back (its instance
    dict holds exactly them, in definition order)."""
    return dict(vars(record))


_last_iso: tuple[object, str] = (object(), "")


def _iso(moment: datetime) -> str:
    """``moment`` as hashed. A batch stamps one moment on all its records, so the last
    conversion is kept (one tuple, read and replaced whole: safe across threads)."""
    global _last_iso
    seen, text = _last_iso
    if moment is not seen:
        text = moment.isoformat(timespec="microseconds")
        _last_iso = (moment, text)
    return text


def canonical_encoding(chain: int, seq: int, record: AuditRecord) -> bytes:
    """Sorted keys, no spaces, UTF-8: json.dumps(body, sort_keys=True,
    separators=(",", ":"), ensure_ascii=False, default=str).encode() is the definition.

    Stored hashes depend on these bytes, so they never change. orjson gives the very
    same bytes for plain JSON (strings, whole numbers, booleans, null, lists and
    dicts with string keys), every character and key order included, at a fraction of
    the cost; anything else (a float, whose digits the two write differently, a date,
    an enum) or what orjson refuses (a whole number past 64 bits) goes to json.dumps."""
    body = {
        **record_fields(record),
        "chain": chain,
        "seq": seq,
        "occurred_at": _iso(record.occurred_at),
    }
    if is_plain_json(body):
        try:
            return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            pass  # a number too large for orjson: json.dumps writes it
    return _CANONICAL_ENCODER.encode(body).encode()


# json.dumps(body, sort_keys=True, ...), without building an encoder per call.
_CANONICAL_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
)


_SCALARS = frozenset({str, int, bool, type(None)})
_SEQUENCES = frozenset({list, tuple})


def is_plain_json(value: object) -> bool:
    """Whether ``value`` is JSON that orjson and json.dumps write alike. Exact types
    only: a subclass (an enum, say) may encode differently in one of them. Loops, not
    all(...): this runs for every audit entry, and the generators cost twice as much."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if isinstance(value, dict) and kind is dict:
        for key, item in value.items():
            if type(key) is not str or (type(item) not in _SCALARS and not is_plain_json(item)):
                return False
        return True
    if isinstance(value, list | tuple) and kind in _SEQUENCES:
        for item in value:  # noqa: SIM110 - see above
            if type(item) not in _SCALARS and not is_plain_json(item):
                return False
        return True
    return False


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
