"""CEL conditions (common-expression-language, Rust core), compiled once at load.

The library has no static type checker, so references are checked against the case
type's field schema here, and a trial evaluation on typed sample values catches
operator/type mismatches before a definition can load.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

import cel

from careloop.domain.conditions import ConditionError

_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_CASE_REFERENCE = re.compile(r"\bcase((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
_VARIABLES = ("case", "actor")
_SAMPLES: dict[str, Any] = {"string": "x", "list": ["x"], "int": 1, "double": 1.0, "bool": True}
MAX_EXPRESSION_LENGTH = 2000


class _Prepared(threading.local):
    """The CEL contexts of the activation evaluated last, per thread, by the case fields
    they hold. The library converts a Python dict into CEL values on every call; an
    event's rules all see the same activation, so converting it once per set of fields
    makes each further condition nearly free."""

    activation: object = None
    contexts: dict[frozenset[str] | None, Any]

    def __init__(self) -> None:
        self.contexts = {}


_PREPARED = _Prepared()


def _context_for(activation: Mapping[str, object], fields: frozenset[str] | None) -> Any:
    prepared = _PREPARED
    if prepared.activation is not activation:
        prepared.contexts = {}
        prepared.activation = activation
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


class CelCondition:
    def __init__(self, source: str, program: Any) -> None:
        self.source = source
        self._program = program
        self._fields = case_fields(source)

    def evaluate(self, activation: Mapping[str, object]) -> bool:
        """Evaluate against ``activation``; callers must not mutate an activation they
        have evaluated with (it is converted once and reused while it is the latest)."""
        try:
            result = self._program.execute(_context_for(activation, self._fields))
        except Exception as error:  # the library raises KeyError, TypeError, ValueError...
            raise ConditionError(f"{type(error).__name__}: {error}") from error
        if not isinstance(result, bool):
            raise ConditionError(f"condition returned {type(result).__name__}, not bool")
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
