"""What use cases need, wired once at start-up (see careloop.bootstrap)."""

from __future__ import annotations

from dataclasses import dataclass

from careloop.services.ports import Clock, UnitOfWorkFactory
from careloop.services.workflows import WorkflowRegistry


@dataclass(frozen=True)
class Deps:
    uow: UnitOfWorkFactory
    read_uow: UnitOfWorkFactory  # for lookups that write nothing (no audit either)
    clock: Clock
    workflows: WorkflowRegistry
    max_upload_bytes: int = 20_000_000
    allowed_upload_types: tuple[str, ...] = ("application/pdf", "text/plain")
