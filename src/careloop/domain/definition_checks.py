"""What every definition builder shares: problems collected with their lines.

Builders collect every problem (not only the first) so an author can fix a file in
one pass; each problem names the file and the nearest line of the offending node.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from careloop.domain.errors import DefinitionProblem

Path = tuple[str | int, ...]


@dataclass
class Collector:
    source: str
    lines: Mapping[Path, int]
    problems: list[DefinitionProblem] = field(default_factory=list)

    def add(self, path: Path, problem: str) -> None:
        self.problems.append(DefinitionProblem(self.source, self.line_of(path), problem))

    def line_of(self, path: Path) -> int | None:
        # Fall back to the nearest enclosing node that has a line.
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


def check_keys(
    out: Collector,
    path: Path,
    node: Mapping[str, Any],
    allowed: frozenset[str],
    required: frozenset[str] = frozenset(),
) -> None:
    for unknown in sorted(set(node) - allowed):
        out.add((*path, unknown), f"unknown key {unknown!r}")
    for missing in sorted(required - set(node)):
        out.add(path, f"missing required key {missing!r}")


def as_names(raw: object) -> list[str]:
    """A scalar or a list of scalars, as a list of strings."""
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, Sequence):
        return [str(item) for item in raw]
    return [str(raw)]


def check_version(out: Collector, raw: Mapping[str, Any]) -> int:
    version = raw.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        out.add(("version",), "version must be a positive integer")
        return 0
    return version


NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,99}$")


def check_name(out: Collector, path: Path, name: str, what: str) -> None:
    if not NAME.match(name):
        out.add(path, f"{what} {name!r} must be lower-case letters, digits, '-', '_' or '.'")


def check_header(
    out: Collector,
    raw: Mapping[str, Any],
    allowed: frozenset[str],
    required: frozenset[str],
    case_type: str,
) -> tuple[str, int]:
    """The keys, ``key``, ``version`` and ``case_type`` every case-type definition has;
    returns (key, version)."""
    check_keys(out, (), raw, allowed, required=required)
    key = str(raw.get("key", ""))
    check_name(out, ("key",), key, "key")
    version = check_version(out, raw)
    if raw.get("case_type", case_type) != case_type:
        out.add(("case_type",), f"case_type {raw.get('case_type')!r} is not {case_type!r}")
    return key, version
