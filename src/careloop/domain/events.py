"""Events a case records as it changes; the outbox carries them out after commit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    type: str  # e.g. "case.created", "case.transitioned"
    payload: dict[str, Any] = field(default_factory=dict)
    # What makes this event unique within its case when the case version does not
    # change (notes, documents and tasks leave the version alone), e.g. "note:17".
    key: str = ""
