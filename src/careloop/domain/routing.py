"""Routing tables: first-hit decision rows that send a case to a queue, a team and,
optionally, the least-loaded specialist with open capacity.

A table is data (``definitions/routing.yaml``). Rows are read top to bottom and the
first row whose criteria all match wins; the last row must match everything, so no
case is ever left unrouted. ``build_routing_table`` validates a parsed document and
reports every problem with its line.

Routing is indexed when the table is built: each criterion keeps, per value, a bitset
of the rows that accept it, so ``route`` costs one dict lookup and one integer AND per
criterion whatever the number of rows, and the first hit is the lowest set bit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

# referral.py imports workflow_builder, never this module; keep it that way (no cycle).
from careloop.domain import referral
from careloop.domain.definition_checks import Collector, Path, check_keys, check_version
from careloop.domain.errors import DefinitionInvalid

ANY = "*"
LEAST_LOADED_SPECIALIST = "least_loaded_specialist"
ASSIGN_STRATEGIES = frozenset({LEAST_LOADED_SPECIALIST})
DEFAULT_HORIZON_DAYS = 14
MAX_HORIZON_DAYS = 365
KIND = "routing"
_ZIP_PATTERN = re.compile(r"^(\d{5}|\d{1,5}\*)$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_TOP_KEYS = frozenset({"key", "version", "case_type", "kind", "title", "rows"})
_ROW_KEYS = frozenset({"when", "queue", "team", "assign", "horizon_days"})


@dataclass(frozen=True)
class Criterion:
    """One column of a routing table: where its value lives in the case, what it may be."""

    path: tuple[str, ...]
    allowed: frozenset[str] | None = None  # None: free text such as payer or clinic names
    prefix: bool = False  # ZIP codes: patterns such as '606*' match by prefix


@dataclass(frozen=True)
class RoutingSchema:
    case_type: str
    criteria: Mapping[str, Criterion]


REFERRAL_ROUTING = RoutingSchema(
    case_type=referral.CASE_TYPE,
    criteria={
        "specialty": Criterion(("specialty",), frozenset(referral.SPECIALTIES)),
        "urgency": Criterion(("urgency",), frozenset(referral.URGENCIES)),
        "payer": Criterion(("payer", "name")),
        "network_status": Criterion(("network_status",), frozenset(referral.NETWORK_STATUSES)),
        "clinic": Criterion(("clinic",)),
        "zip": Criterion(("patient", "postal_code"), prefix=True),
        # The referral has no separate "referral type": the intake channel plays that part.
        "channel": Criterion(("channel",), frozenset(referral.CHANNELS)),
    },
)


@dataclass(frozen=True)
class RoutingRule:
    """One row. ``when`` maps a criterion to its allowed values; an absent criterion is any."""

    queue: str
    when: Mapping[str, frozenset[str]] = field(default_factory=dict)
    team: str | None = None
    assign: str | None = None
    horizon_days: int | None = None  # open slots are counted over this many days
    line: int | None = None

    @property
    def is_catch_all(self) -> bool:
        return not self.when


@dataclass(frozen=True)
class RoutingDecision:
    queue: str
    team: str | None
    row_index: int  # 0-based position in RoutingTable.rows
    assign: str | None
    horizon_days: int | None


@dataclass(frozen=True)
class _Column:
    path: tuple[str, ...]
    prefix: bool
    wildcard: int  # rows that do not constrain this criterion
    by_value: Mapping[str, int]  # normalised value or ZIP prefix -> rows that accept it


@dataclass(frozen=True)
class RoutingTable:
    key: str
    version: int
    case_type: str
    rows: tuple[RoutingRule, ...]
    source: str = ""
    schema: RoutingSchema = field(default=REFERRAL_ROUTING, repr=False, compare=False)
    _columns: tuple[_Column, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.rows or not self.rows[-1].is_catch_all:
            raise ValueError("a routing table must end with a catch-all row")
        for rule in self.rows:
            unknown = set(rule.when) - set(self.schema.criteria)
            if unknown:
                raise ValueError(f"unknown routing criteria {sorted(unknown)}")
        object.__setattr__(self, "_columns", _index(self.rows, self.schema))


def _index(rows: Sequence[RoutingRule], schema: RoutingSchema) -> tuple[_Column, ...]:
    every_row = (1 << len(rows)) - 1
    columns = []
    for name, criterion in schema.criteria.items():
        wildcard = 0
        by_value: dict[str, int] = {}
        for position, rule in enumerate(rows):
            allowed = rule.when.get(name)
            if allowed is None:
                wildcard |= 1 << position
                continue
            for value in allowed:
                value_key = value.rstrip(ANY) if criterion.prefix else value.casefold()
                by_value[value_key] = by_value.get(value_key, 0) | 1 << position
        if wildcard != every_row:  # a column no row constrains cannot change the answer
            columns.append(_Column(criterion.path, criterion.prefix, wildcard, by_value))
    return tuple(columns)


def route(table: RoutingTable, case_data: Mapping[str, object]) -> RoutingDecision:
    """The decision of the first row (top to bottom) whose criteria all match the case."""
    hits = (1 << len(table.rows)) - 1
    for column in table._columns:
        value = _case_value(case_data, column.path)
        accepted = column.wildcard
        if value is not None and column.prefix:
            code = value.split("-", 1)[0]
            for length in range(1, min(len(code), 5) + 1):
                accepted |= column.by_value.get(code[:length], 0)
        elif value is not None:
            accepted |= column.by_value.get(value, 0)
        hits &= accepted
    # The catch-all row keeps ``hits`` non-zero; the lowest set bit is the first hit.
    index = (hits & -hits).bit_length() - 1
    rule = table.rows[index]
    return RoutingDecision(rule.queue, rule.team, index, rule.assign, rule.horizon_days)


def _case_value(data: Mapping[str, object], path: tuple[str, ...]) -> str | None:
    node: object = data
    for part in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node.strip().casefold() if isinstance(node, str) else None


@dataclass(frozen=True)
class SpecialistLoad:
    """A specialist's capacity as of now; ``open_slots`` counts the routing horizon only."""

    name: str
    specialty: str
    clinics: frozenset[str]
    open_slots: int
    open_workload: int
    max_workload: int
    available: bool = True  # False when off the working calendar (leave, not rostered)

    def __post_init__(self) -> None:
        if min(self.open_slots, self.open_workload, self.max_workload) < 0:
            raise ValueError("slot and workload counts cannot be negative")

    @property
    def has_capacity(self) -> bool:
        return self.available and self.open_slots > 0 and self.open_workload < self.max_workload


def pick_specialist(
    candidates: Iterable[SpecialistLoad], specialty: str, clinic: str | None
) -> SpecialistLoad | None:
    """The least-loaded specialist of ``specialty`` serving ``clinic`` with capacity.

    A specialist must serve the case's clinic: there is no fallback to another
    location (the patient would have to travel, and credentials are per site), so
    ``None`` leaves the case in its queue for a person to assign. ``clinic=None`` (a
    case without a location) accepts any clinic. Order: lowest workload ratio, then
    most open slots, then name, so the same loads always give the same answer.
    """
    eligible = [
        candidate
        for candidate in candidates
        if candidate.specialty == specialty
        and (clinic is None or clinic in candidate.clinics)
        and candidate.has_capacity
    ]
    return min(eligible, key=_load_order, default=None)


def _load_order(candidate: SpecialistLoad) -> tuple[Fraction, int, str]:
    # Fraction, not float: equal ratios such as 1/3 and 2/6 must tie exactly.
    ratio = Fraction(candidate.open_workload, candidate.max_workload)
    return ratio, -candidate.open_slots, candidate.name


def build_routing_table(
    raw: object,
    *,
    source: str,
    lines: Mapping[Path, int],
    schema: RoutingSchema = REFERRAL_ROUTING,
) -> RoutingTable:
    """Validate a parsed routing document; raise ``DefinitionInvalid`` with every problem."""
    out = Collector(source, lines)
    if not isinstance(raw, Mapping):
        out.add((), "a routing table must be a mapping")
        raise DefinitionInvalid(out.problems)
    check_keys(out, (), raw, _TOP_KEYS, _TOP_KEYS - {"kind", "title"})
    key = raw.get("key")
    if "key" in raw and (not isinstance(key, str) or not _NAME.match(key)):
        out.add(("key",), f"key {key!r} must be a lower-case name such as 'referral-routing'")
    version = check_version(out, raw)
    if raw.get("kind", KIND) != KIND:
        out.add(("kind",), f"kind {raw.get('kind')!r} is not {KIND!r}")
    if "case_type" in raw and raw.get("case_type") != schema.case_type:
        out.add(("case_type",), f"case_type {raw.get('case_type')!r} is not {schema.case_type!r}")
    rows = _build_rows(out, raw.get("rows"), schema)
    if out.problems:
        raise DefinitionInvalid(out.problems)
    return RoutingTable(str(key), version, schema.case_type, tuple(rows), source, schema)


def _build_rows(out: Collector, raw: object, schema: RoutingSchema) -> list[RoutingRule]:
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
        out.add(("rows",), "rows must be a non-empty list")
        return []
    rules: list[RoutingRule] = []
    clean: list[tuple[Path, RoutingRule]] = []  # rows whose criteria are all valid
    for index, spec in enumerate(raw):
        path: Path = ("rows", index)
        if not isinstance(spec, Mapping):
            out.add(path, "a row must be a mapping with 'queue' and optionally 'when'")
            continue
        before = len(out.problems)
        when = _build_when(out, (*path, "when"), spec.get("when"), schema)
        when_ok = len(out.problems) == before
        check_keys(out, path, spec, _ROW_KEYS, frozenset({"queue"}))
        assign, horizon_days = _build_assignment(out, path, spec)
        rule = RoutingRule(
            queue=_build_name(out, (*path, "queue"), spec.get("queue"), "queue") or "",
            when=when,
            team=_build_name(out, (*path, "team"), spec.get("team"), "team"),
            assign=assign,
            horizon_days=horizon_days,
            line=out.line_of(path),
        )
        rules.append(rule)
        if when_ok:
            clean.append((path, rule))
    _check_order(out, clean, last_path=("rows", len(raw) - 1), schema=schema)
    return rules


def _build_when(
    out: Collector, path: Path, raw: object, schema: RoutingSchema
) -> dict[str, frozenset[str]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        out.add(path, "'when' must map criteria to values, lists of values or '*'")
        return {}
    when: dict[str, frozenset[str]] = {}
    for name, value in raw.items():
        criterion = schema.criteria.get(str(name))
        if criterion is None:
            out.add(
                (*path, name), f"unknown criterion {name!r}; use one of {sorted(schema.criteria)}"
            )
        elif value != ANY:
            when[str(name)] = _build_values(out, (*path, name), str(name), value, criterion)
    return when


def _build_values(
    out: Collector, path: Path, name: str, raw: object, criterion: Criterion
) -> frozenset[str]:
    if isinstance(raw, Sequence) and not isinstance(raw, str):
        items: list[tuple[Path, object]] = [((*path, i), item) for i, item in enumerate(raw)]
        if not items:
            out.add(path, f"{name}: an empty list matches nothing; use '*' for any value")
    else:
        items = [(path, raw)]
    values: set[str] = set()
    for item_path, item in items:
        if not isinstance(item, str) or not item.strip():
            hint = (
                " (quote ZIP patterns: 02134 would be read as a number)" if criterion.prefix else ""
            )
            out.add(item_path, f"{name}: {item!r} must be a non-empty text value{hint}")
            continue
        value = item.strip().casefold()
        if value == ANY:
            out.add(item_path, f"{name}: '*' cannot be listed with other values")
        elif criterion.prefix and not _ZIP_PATTERN.match(value):
            out.add(item_path, f"zip: {item!r} is not a ZIP pattern like '60601' or '606*'")
        elif criterion.allowed is not None and value not in criterion.allowed:
            out.add(item_path, f"unknown {name} {item!r}; use one of {sorted(criterion.allowed)}")
        elif value in values:
            out.add(item_path, f"{name}: {item!r} is listed twice")
        else:
            values.add(value)
    return frozenset(values)


def _build_name(out: Collector, path: Path, raw: object, what: str) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not _NAME.match(raw):
        out.add(
            path, f"{what} {raw!r} must be a non-empty lower-case name such as 'general-intake'"
        )
        return None
    return raw


def _build_assignment(
    out: Collector, path: Path, spec: Mapping[str, Any]
) -> tuple[str | None, int | None]:
    assign, horizon = spec.get("assign"), spec.get("horizon_days")
    if assign is None:
        if horizon is not None:
            out.add((*path, "horizon_days"), "horizon_days only applies with 'assign'")
        return None, None
    if assign not in ASSIGN_STRATEGIES:
        out.add(
            (*path, "assign"), f"unknown assign {assign!r}; use one of {sorted(ASSIGN_STRATEGIES)}"
        )
    if horizon is None:
        return str(assign), DEFAULT_HORIZON_DAYS
    if (
        not isinstance(horizon, int)
        or isinstance(horizon, bool)
        or not 1 <= horizon <= MAX_HORIZON_DAYS
    ):
        problem = f"horizon_days must be a whole number of days from 1 to {MAX_HORIZON_DAYS}"
        out.add((*path, "horizon_days"), problem)
        return str(assign), DEFAULT_HORIZON_DAYS
    return str(assign), horizon


def _check_order(
    out: Collector,
    rules: list[tuple[Path, RoutingRule]],
    *,
    last_path: Path,
    schema: RoutingSchema,
) -> None:
    first_with: dict[tuple[tuple[str, frozenset[str]], ...], RoutingRule] = {}
    catch_all: RoutingRule | None = None
    for path, rule in rules:
        if catch_all is not None:
            out.add(path, f"unreachable: the row at line {catch_all.line} matches every case")
            continue
        signature = tuple(sorted(rule.when.items(), key=lambda item: item[0]))
        earlier = first_with.setdefault(signature, rule)
        if earlier is not rule:
            out.add(path, f"unreachable: repeats the criteria of the row at line {earlier.line}")
        if rule.is_catch_all:
            catch_all = rule
    last_is_clean = bool(rules) and rules[-1][0] == last_path
    if catch_all is None and last_is_clean:
        out.add(
            last_path,
            f"no default row: a {schema.case_type} matching nothing would be unrouted; "
            "end the table with a row without 'when'",
        )
