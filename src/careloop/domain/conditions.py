"""The condition port: guards and rule conditions are compiled once at load.

The domain only knows this interface; the CEL implementation lives in
``careloop.adapters.cel_conditions`` so the domain stays free of third-party code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol


class ConditionError(Exception):
    """A condition failed to compile or to evaluate; the message names the problem."""


class Condition(Protocol):
    source: str

    def evaluate(self, activation: Mapping[str, object]) -> bool: ...


# (expression, field schema of the case type) -> compiled condition, or ConditionError
ConditionCompiler = Callable[[str, Mapping[str, str]], Condition]
