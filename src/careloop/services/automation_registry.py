"""Automation definitions: stored by version, validated before storing, one active
version per key, compiled once and shared by every worker in the process.

Activating a version is a separate step from storing it; a version that fails
validation is never stored, so the active version stays in place. Only an approved
change request (services/governance.py) or the installation baseline activates one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from careloop.domain.approval_policy import (
    ApprovalPolicySet,
)
from careloop.domain.calendar import ALWAYS_OPEN, BusinessCalendar
from careloop.domain.errors import DefinitionInvalid, DefinitionProblem, NotFound
from careloop.domain.routing import RoutingTable
from careloop.domain.rules import RuleSet
from careloop.domain.workflow import Workflow
from careloop.services.ports import UnitOfWork, UnitOfWorkFactory
from careloop.services.workflows import WorkflowRegistry

KINDS = ("calendars", "routing", "rules", "approvals")
REFRESH_SECONDS = 2.0
DEFAULT_CALENDAR = "default"


@dataclass(frozen=True)
class DefinitionLoaders:
    """The adapter functions that parse and validate each kind of definition."""

    kind_of: Callable[[str, str], str]
    header: Callable[[str, str], tuple[str, int, str]]
    calendars: Callable[[str, str], dict[str, BusinessCalendar]]
    routing: Callable[[str, str], RoutingTable]
    rules: Callable[[str, str, Workflow, frozenset[str], frozenset[str]], RuleSet]
    checksum: Callable[[str], str]
    # (text, source, workflow or None to skip transition checks) -> policies
    approvals: Callable[[str, str, Workflow | None], ApprovalPolicySet] | None = None


@dataclass(frozen=True)
class AutomationConfig:
    """One consistent snapshot of everything active."""

    rulesets: Mapping[str, tuple[RuleSet, ...]] = field(default_factory=dict)  # by case type
    routing: Mapping[str, RoutingTable] = field(default_factory=dict)
    calendars: Mapping[str, BusinessCalendar] = field(default_factory=dict)
    approvals: Mapping[str, tuple[ApprovalPolicySet, ...]] = field(default_factory=dict)
    fingerprint: tuple[tuple[str, str, int], ...] = ()

    def calendar_for(self, location: str) -> BusinessCalendar:
        return self.calendars.get(location) or self.calendars.get(DEFAULT_CALENDAR) or ALWAYS_OPEN


class AutomationRegistry:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        read_uow: UnitOfWorkFactory,
        loaders: DefinitionLoaders,
        workflows: WorkflowRegistry,
        integration_ports: frozenset[str] = frozenset(),
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        self._uow = uow
        self._read_uow = read_uow
        self._loaders = loaders
        self._workflows = workflows
        self.integration_ports = integration_ports
        self._refresh = refresh_seconds
        self._lock = threading.Lock()
        self._config = AutomationConfig()
        self._checked_at = float("-inf")

    def current(self) -> AutomationConfig:
        """The active snapshot; another process's activation shows within REFRESH_SECONDS."""
        config = self.fresh()
        if config is not None:
            return config
        with self._lock:
            if time.monotonic() - self._checked_at >= self._refresh:
                self._reload()
            return self._config

    def fresh(self) -> AutomationConfig | None:
        """The active snapshot if it is not due to be checked again, else None: for
        callers that must not wait on the database (an event loop)."""
        if time.monotonic() - self._checked_at < self._refresh:
            return self._config
        return None

    def invalidate(self) -> None:
        self._checked_at = float("-inf")

    def _reload(self) -> None:
        with self._read_uow() as uow:
            rows = [row for kind in KINDS for row in uow.automation.active_definitions(kind)]
        fingerprint = tuple(sorted((r["kind"], r["key"], r["version"]) for r in rows))
        if fingerprint != self._config.fingerprint:
            self._config = self._compile(rows, fingerprint)
        self._checked_at = time.monotonic()

    def _compile(
        self, rows: list[dict[str, Any]], fingerprint: tuple[tuple[str, str, int], ...]
    ) -> AutomationConfig:
        calendars: dict[str, BusinessCalendar] = {}
        routing: dict[str, RoutingTable] = {}
        for row in rows:
            source = f"{row['source_name']} (stored v{row['version']})"
            if row["kind"] == "calendars":
                calendars.update(self._loaders.calendars(row["source_text"], source))
            elif row["kind"] == "routing":
                table = self._loaders.routing(row["source_text"], source)
                routing[table.key] = table
        rulesets: dict[str, list[RuleSet]] = {}
        for row in sorted(rows, key=lambda r: r["key"]):
            if row["kind"] == "rules":
                source = f"{row['source_name']} (stored v{row['version']})"
                ruleset = self._build_rules(row["source_text"], source, row["case_type"], routing)
                rulesets.setdefault(ruleset.case_type, []).append(ruleset)
        approvals: dict[str, list[ApprovalPolicySet]] = {}
        for row in sorted(rows, key=lambda r: r["key"]):
            if row["kind"] == "approvals":
                source = f"{row['source_name']} (stored v{row['version']})"
                policies = self._build_approvals(row["source_text"], source, None)
                approvals.setdefault(policies.case_type, []).append(policies)
        return AutomationConfig(
            rulesets={k: tuple(v) for k, v in rulesets.items()},
            routing=routing,
            calendars=calendars,
            approvals={k: tuple(v) for k, v in approvals.items()},
            fingerprint=fingerprint,
        )

    def _build_approvals(
        self, text: str, source: str, workflow: Workflow | None
    ) -> ApprovalPolicySet:
        if self._loaders.approvals is None:
            raise DefinitionInvalid([DefinitionProblem(source, None, "approvals are not wired")])
        return self._loaders.approvals(text, source, workflow)

    def _build_rules(
        self, text: str, source: str, case_type: str, routing: Mapping[str, RoutingTable]
    ) -> RuleSet:
        workflow = self._workflows.latest(case_type)
        return self._loaders.rules(
            text, source, workflow, frozenset(routing), self.integration_ports
        )

    # -- managing versions ---------------------------------------------------------
    def kind_of(self, text: str, source: str) -> str:
        """'workflow' or the automation kind a definition text declares."""
        return self._loaders.kind_of(text, source)

    def validate(self, text: str, source: str) -> tuple[str, str, int]:
        """Validate a definition against what is active; returns (kind, key, version)."""
        kind = self._loaders.kind_of(text, source)
        if kind not in KINDS:
            raise DefinitionInvalid(
                [DefinitionProblem(source, None, f"kind {kind!r} is not one of {KINDS}")]
            )
        key, version, case_type = self._loaders.header(text, source)
        if kind == "calendars":
            self._loaders.calendars(text, source)
        elif kind == "routing":
            self._loaders.routing(text, source)
        elif kind == "approvals":
            self._build_approvals(text, source, self._workflows.latest(case_type))
        else:
            routing = dict(self.current().routing)
            self._build_rules(text, source, case_type, routing)
        return kind, key, version

    def store(
        self, text: str, source: str, by: str, now: datetime, activate: bool = False
    ) -> tuple[str, str, int, bool]:
        """Validate and store a version; returns (kind, key, version, newly stored).
        ``activate`` is for the installation baseline only (bootstrap.migrate)."""
        with self._uow() as uow:
            kind, key, version, new = self.add_version(uow, text, source, by, now)
            if activate:
                uow.automation.activate(kind, key, version, by, now)
            uow.commit()
        self.invalidate()
        return kind, key, version, new

    def add_version(
        self, uow: UnitOfWork, text: str, source: str, by: str, now: datetime
    ) -> tuple[str, str, int, bool]:
        """Validate and add a version in the caller's transaction (never commits).
        A stored version is immutable: other content under its number is refused."""
        kind, key, version = self.validate(text, source)
        _, _, case_type = self._loaders.header(text, source)
        digest = self._loaders.checksum(text)
        existing = uow.automation.definition(kind, key, version)
        if existing is not None and existing["checksum"] != digest:
            raise DefinitionInvalid(
                [
                    DefinitionProblem(
                        source,
                        None,
                        f"{kind} {key} version {version} is already stored with different "
                        "content; give the changed definition a new version",
                    )
                ]
            )
        if existing is None:
            uow.automation.add_definition(
                {
                    "kind": kind,
                    "key": key,
                    "version": version,
                    "case_type": case_type,
                    "source_name": source,
                    "source_text": text,
                    "checksum": digest,
                    "created_at": now,
                    "created_by": by,
                    "active": False,
                }
            )
        return kind, key, version, existing is None

    def activate_in(
        self, uow: UnitOfWork, kind: str, key: str, version: int, by: str, now: datetime
    ) -> None:
        """Activate a stored version in the caller's transaction: an approved change
        request's last step. Call ``invalidate`` after the commit."""
        row = uow.automation.definition(kind, key, version)
        if row is None:
            raise NotFound(f"{kind} {key} version {version} is not stored")
        # Re-validate against what is active now: a rule set stored earlier may
        # reference a routing table that has since changed.
        self.validate(row["source_text"], row["source_name"])
        uow.automation.activate(kind, key, version, by, now)

    def check_workflow(self, workflow: Workflow) -> None:
        """Refuse a workflow version the active rule sets and approval policies of its
        case type do not fit (they name its states and transitions)."""
        routing = frozenset(self.current().routing)
        with self._read_uow() as uow:
            rows = [r for k in ("rules", "approvals") for r in uow.automation.active_definitions(k)]
        for row in rows:
            if row["case_type"] != workflow.case_type:
                continue
            source = f"{row['source_name']} (stored v{row['version']})"
            if row["kind"] == "approvals":
                self._build_approvals(row["source_text"], source, workflow)
            else:
                self._loaders.rules(
                    row["source_text"], source, workflow, routing, self.integration_ports
                )

    def stored(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self._read_uow() as uow:
            rows = uow.automation.definitions(kind)
        return [{k: v for k, v in row.items() if k != "source_text"} for row in rows]

    def source_of(self, kind: str, key: str, version: int) -> dict[str, Any]:
        with self._read_uow() as uow:
            row = uow.automation.definition(kind, key, version)
        if row is None:
            raise NotFound(f"{kind} {key} version {version} is not stored")
        return row

    def has_active(self, kind: str, key: str) -> bool:
        with self._read_uow() as uow:
            return any(r["key"] == key for r in uow.automation.active_definitions(kind))
