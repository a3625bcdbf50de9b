"""Events a case records as it changes; the outbox carries them out after commit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    type: str  # e.g. "case.created", "case.transitioned"
    payload: dict[str, Any] = field(default_factory=dict)
