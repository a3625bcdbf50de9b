"""Safe YAML parsing that remembers the line of every node, for error messages."""

from __future__ import annotations

from typing import Any

import yaml

from careloop.domain.errors import DefinitionInvalid, DefinitionProblem

Path = tuple[str | int, ...]
MAX_DEFINITION_BYTES = 1_000_000


def parse_with_lines(text: str, source: str) -> tuple[Any, dict[Path, int]]:
    """Parse ``text`` with the safe loader; return the data and {path: 1-based line}."""
    if len(text.encode()) > MAX_DEFINITION_BYTES:
        raise DefinitionInvalid([DefinitionProblem(source, None, "definition is too large")])
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        raise _invalid(error, source) from error
    if node is None:
        raise DefinitionInvalid([DefinitionProblem(source, None, "the file is empty")])
    lines: dict[Path, int] = {}
    _walk(node, (), lines)
    constructor = yaml.SafeLoader(text)
    try:
        data = constructor.construct_document(node)
    except yaml.YAMLError as error:
        raise _invalid(error, source) from error
    finally:
        constructor.dispose()
    return data, lines


def _invalid(error: yaml.YAMLError, source: str) -> DefinitionInvalid:
    mark = getattr(error, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(error, "problem", None) or str(error)
    return DefinitionInvalid([DefinitionProblem(source, line, f"not valid YAML: {problem}")])


def _walk(node: yaml.Node, path: Path, lines: dict[Path, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            lines[(*path, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), lines)
