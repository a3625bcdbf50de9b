"""CEL conditions (common-expression-language, Rust core), compiled once at load.

The library has no static type checker, so references are checked against the case
type's field schema here, and a trial evaluation on typed sample values catches
operator/type mismatches before a definition can load.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any, cast

import cel

from careloop.domain.case import TIME_DERIVED
from careloop.domain.conditions import ConditionError

_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_CASE_REFERENCE = re.compile(r"\bcase((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
_VARIABLES = ("case", "actor")
_SAMPLES: dict[str, Any] = {"string": "x", "list": ["x"], "int": 1, "double": 1.0, "bool": True}
MAX_EXPRESSION_LENGTH = 2000


# Verdicts remembered across events, by the values a condition reads: for each set of
# such values (with the names they are read under), the verdicts of the conditions read
# on them, by condition text. A condition has no side effects and CEL's functions are
# deterministic, so the same inputs decide alike; rules mostly test fields with few
# distinct values (clinic, urgency, payer, network status), where handing them to the
# library costs ~10 us a call in the relay and reading the verdict back under one.
# Keyed this way, an event works out the key of each set of fields once, and each
# condition then costs one lookup by its text. Conditions on a time-derived field are
# not remembered: their inputs never come again.
#
# Bounded: at most MAX_VERDICTS entries, a set of values and each verdict in it counting
# one. When full, the oldest sets go until a quarter is free, not the whole (emptying
# it made the next events miss all at once). Reads take no lock; changes take _WRITING,
# as the worker's threads and the web app's share the memory.
Bucket = dict[str, bool]
_VERDICTS: dict[tuple[object, ...], Bucket] = {}
MAX_VERDICTS = 65_536
_WRITING = threading.Lock()
_held = 0  # entries in _VERDICTS, sets and verdicts
_ABSENT = object()  # a field the case does not have: has() and errors depend on it


class _Prepared(threading.local):
    """What was worked out for the activation evaluated last, per thread: its CEL
    contexts by the case fields they hold, and its sets of remembered verdicts (with
    their keys) by the fields a condition reads. The library converts a Python dict into
    CEL values on every call; an event's rules all see the same activation, so converting
    it once per set of fields makes each further condition nearly free, and conditions
    written from one pattern (the same fields, other constants) share one set."""

    activation: object = None
    contexts: dict[frozenset[str] | None, Any]
    buckets: dict[tuple[str, ...], tuple[tuple[object, ...], Bucket] | None]

    def __init__(self) -> None:
        self.contexts = {}
        self.buckets = {}


_PREPARED = _Prepared()


def _prepared_for(activation: Mapping[str, object]) -> _Prepared:
    prepared = _PREPARED
    if prepared.activation is not activation:
        prepared.contexts = {}
        prepared.buckets = {}
        prepared.activation = activation
    return prepared


def _context_for(activation: Mapping[str, object], fields: frozenset[str] | None) -> Any:
    prepared = _prepared_for(activation)
    context = prepared.contexts.get(fields)
    if context is None:
        variables = dict(activation)
        case = variables.get("case")
        if fields is not None and isinstance(case, Mapping):
            # Only what the condition reads: converting a whole referral costs ~15 times
            # more, and a rule that changes the case makes the next condition convert anew.
            variables["case"] = {name: case[name] for name in fields if name in case}
        context = prepared.contexts[fields] = cel.Context(variables=variables)
    return context


def _bucket_for(
    activation: Mapping[str, object], names: tuple[str, ...]
) -> tuple[tuple[object, ...], Bucket] | None:
    """The key and the remembered verdicts of conditions reading ``names`` on these
    values, or None when one of the values has no exact stand-in."""
    buckets = _prepared_for(activation).buckets
    if names in buckets:
        return buckets[names]
    inputs = _input_keys(activation, names)
    found = None
    if inputs is not None:
        bucket = _VERDICTS.get(inputs)
        if bucket is None:
            bucket = _add_bucket(inputs)
        found = (inputs, bucket)
    buckets[names] = found
    return found


def _add_bucket(inputs: tuple[object, ...]) -> Bucket:
    global _held
    with _WRITING:
        bucket = _VERDICTS.get(inputs)
        if bucket is None:
            bucket = _VERDICTS[inputs] = {}
            _held += 1
            _keep_bounded()
        return bucket


def _remember(inputs: tuple[object, ...], bucket: Bucket, source: str, verdict: bool) -> None:
    global _held
    with _WRITING:
        # A set forgotten since it was found is not written to: it would not be counted.
        if _VERDICTS.get(inputs) is bucket and source not in bucket:
            bucket[source] = verdict
            _held += 1
            _keep_bounded()


def _keep_bounded() -> None:
    """With _WRITING held: forget the oldest sets until a quarter of the room is free."""
    global _held
    if _held <= MAX_VERDICTS:
        return
    for key in list(_VERDICTS):  # a dict keeps insertion order; the copy is one C call
        if _held <= MAX_VERDICTS * 3 // 4:
            break
        _held -= 1 + len(_VERDICTS.pop(key))


def forget_verdicts() -> None:
    """Empty the memory (tests that change its size start from nothing)."""
    global _held
    with _WRITING:
        _VERDICTS.clear()
        _held = 0


def _input_keys(
    activation: Mapping[str, object], names: tuple[str, ...]
) -> tuple[object, ...] | None:
    """``names`` with the stand-ins of those case fields and of every other variable."""
    case = activation.get("case")
    if type(case) is not dict:
        return None
    parts: list[object] = [names]
    try:
        for name in names:
            parts.append(_key(case[name]) if name in case else _ABSENT)
        for name, value in activation.items():
            if name != "case":
                parts.append((name, _key(value)))
    except _Unkeyable:
        return None
    return tuple(parts)


class _Unkeyable(Exception):
    """A value that _key cannot stand for exactly (a type other than JSON's own)."""


def _key(value: object) -> object:
    """A hashable stand-in equal only for values CEL cannot tell apart: the exact type
    goes with it (1, 1.0 and true are different CEL values, and are equal in Python),
    and a float by its hex form (-0.0 and 0.0 divide differently)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return (kind, value)
    if kind is float:
        return (kind, cast(float, value).hex())
    if kind is list:
        return (kind, tuple(_key(item) for item in cast(list[object], value)))
    if kind is dict:
        items = []
        for name, item in cast(dict[object, object], value).items():
            if type(name) is not str:
                raise _Unkeyable
            items.append((name, _key(item)))
        return (kind, tuple(items))
    raise _Unkeyable


class CelCondition:
    __slots__ = ("_fields", "_names", "_program", "source")  # 10,000 rules: compact

    def __init__(self, source: str, program: Any) -> None:
        self.source = source
        self._program = program
        self._fields = fields = case_fields(source)
        # The fields whose values key a remembered verdict; None: not remembered (it
        # reads the whole case, or a time-derived field).
        self._names = None
        if fields is not None and not fields & TIME_DERIVED:
            self._names = tuple(sorted(fields))

    def evaluate(self, activation: Mapping[str, object]) -> bool:
        """Evaluate against ``activation``; callers must not mutate an activation they
        have evaluated with (it is converted once and reused while it is the latest)."""
        found = None if self._names is None else _bucket_for(activation, self._names)
        if found is not None:
            known = found[1].get(self.source)
            if known is not None:
                return known
        try:
            result = self._program.execute(_context_for(activation, self._fields))
        except Exception as error:  # the library raises KeyError, TypeError, ValueError...
            raise ConditionError(f"{type(error).__name__}: {error}") from error
        if not isinstance(result, bool):
            raise ConditionError(f"condition returned {type(result).__name__}, not bool")
        if found is not None:
            _remember(found[0], found[1], self.source, result)
        return result


_CASE = re.compile(r"\bcase\b")
# A field of case, unless a "(" follows: case.exists(k, ...) is a macro over all its keys.
_FIELD = re.compile(r"\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()")


def case_fields(expression: str) -> frozenset[str] | None:
    """The top-level fields of ``case`` that ``expression`` reads, or None when it may read
    more than it names (``case['x']``, ``case`` as a whole or with a macro or method, a
    macro variable called case, or text this scan cannot be sure of: comments, escapes,
    triple quotes)."""
    if any(mark in expression for mark in ("//", "\\", "'''", '"""')):
        return None
    code = _STRING_LITERAL.sub(" 0 ", expression)
    if "'" in code or '"' in code:
        return None
    names = set()
    for match in _CASE.finditer(code):
        field = _FIELD.match(code, match.end())
        if field is None or code[: match.start()].rstrip().endswith("."):
            return None
        names.add(field.group(1))
    return frozenset(names)


def compile_condition(expression: str, fields: Mapping[str, str]) -> CelCondition:
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ConditionError(f"expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    try:
        program = cel.compile(expression)
    except (ValueError, RuntimeError) as error:
        raise ConditionError(str(error).splitlines()[0]) from error
    _check_variables(expression)
    _check_references(expression, fields)
    condition = CelCondition(expression, program)
    _trial_evaluate(condition, fields)
    return condition


def _check_references(expression: str, fields: Mapping[str, str]) -> None:
    code = _STRING_LITERAL.sub("''", expression)
    prefixes = {path.rsplit(".", i)[0] for path in fields for i in range(path.count(".") + 1)}
    for match in _CASE_REFERENCE.finditer(code):
        path = match.group(1)[1:]
        # A method call such as case.reason.startsWith(...) ends in a non-field name.
        parts = path.split(".")
        known = next(
            (
                ".".join(parts[:n])
                for n in range(len(parts), 0, -1)
                if ".".join(parts[:n]) in prefixes
            ),
            None,
        )
        if known is None:
            raise ConditionError(f"unknown field 'case.{path}'")
        if known != path and known not in fields:
            raise ConditionError(f"unknown field 'case.{path}'")
        rest = parts[len(known.split(".")) :]
        if rest and not _is_call(code, match.end(), rest):
            raise ConditionError(f"unknown field 'case.{path}'")


def _is_call(code: str, end: int, rest: list[str]) -> bool:
    # Only the last segment may be a method (followed by '('); more segments are fields.
    return len(rest) == 1 and code[end:].lstrip().startswith("(")


def _trial_evaluate(condition: CelCondition, fields: Mapping[str, str]) -> None:
    sample: dict[str, Any] = {}
    for path, type_name in fields.items():
        node = sample
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _SAMPLES.get(type_name, "x")
    try:
        condition.evaluate({"case": sample, "actor": {"roles": ["x"], "username": "x"}})
    except ConditionError as error:
        if "No such overload" in str(error) or "not bool" in str(error):
            raise ConditionError(f"type error: {str(error).split('.')[0]}") from error
        # Other evaluation errors depend on data (e.g. missing keys in maps); allowed.


_IDENTIFIER = re.compile(r"(?<![.\w])([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()")
_MACRO_BINDING = re.compile(r"\.(?:all|exists|exists_one|map|filter)\(\s*([A-Za-z_]\w*)\s*,")
_KEYWORDS = frozenset({"true", "false", "null", "in"})


def _check_variables(expression: str) -> None:
    code = _STRING_LITERAL.sub("''", expression)
    bound = set(_MACRO_BINDING.findall(code))
    for name in _IDENTIFIER.findall(code):
        if name not in _VARIABLES and name not in bound and name not in _KEYWORDS:
            raise ConditionError(f"unknown variable {name!r}; use 'case' or 'actor'")
