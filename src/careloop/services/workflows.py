"""The workflow registry: definitions are stored by version and compiled once; new cases
start on the active version of a key, which only an approved change (or the installation
baseline) sets."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime

from careloop.domain.errors import DefinitionInvalid, DefinitionProblem, NotFound
from careloop.domain.workflow import Workflow
from careloop.services.ports import UnitOfWork, UnitOfWorkFactory

# (text, source name) -> validated workflow; raises DefinitionInvalid
WorkflowLoader = Callable[[str, str], Workflow]
LATEST_TTL_SECONDS = 30.0


class WorkflowRegistry:
    """Compiled workflows by (key, version); loads stored versions on first use."""

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        read_uow: UnitOfWorkFactory,
        load: WorkflowLoader,
        checksum: Callable[[str], str],
    ) -> None:
        self._uow = uow
        self._read_uow = read_uow
        self._load = load
        self._checksum = checksum
        self._compiled: dict[tuple[str, int], Workflow] = {}
        self._lock = threading.Lock()
        self._latest: dict[str, tuple[float, Workflow]] = {}

    def compiled(self, key: str, version: int) -> Workflow | None:
        """The workflow if it is compiled already (never touches the database)."""
        return self._compiled.get((key, version))

    def get(self, key: str, version: int) -> Workflow:
        workflow = self._compiled.get((key, version))
        if workflow is not None:
            return workflow
        with self._read_uow() as uow:
            row = uow.definitions.find(key, version)
        if row is None:
            raise NotFound(f"workflow {key} version {version} is not stored")
        workflow = self._load(row["source_text"], f"{row['source_name']} (stored)")
        with self._lock:
            self._compiled[(key, version)] = workflow
        return workflow

    def latest(self, case_type: str) -> Workflow:
        """The active version new cases start on. Cached briefly: intake calls this every
        time, and a version activated by another process is picked up within LATEST_TTL."""
        cached = self._latest.get(case_type)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        workflow = self._find_latest(case_type)
        with self._lock:
            self._latest[case_type] = (time.monotonic() + LATEST_TTL_SECONDS, workflow)
        return workflow

    def forget_active(self) -> None:
        """Drop the cached active versions (after this process activated one)."""
        with self._lock:
            self._latest.clear()

    def _find_latest(self, case_type: str) -> Workflow:
        with self._read_uow() as uow:
            rows = [r for r in uow.governance.active_workflows() if r["case_type"] == case_type]
        if not rows:
            raise NotFound(
                f"no workflow is active for case type {case_type!r}; run `careloop migrate`"
            )
        newest = max(rows, key=lambda r: (r["key"] == f"{case_type}-standard", r["version"]))
        return self.get(newest["key"], newest["version"])

    def list(self) -> list[dict[str, object]]:
        with self._read_uow() as uow:
            rows = uow.definitions.all()
            active = {(r["key"], r["version"]) for r in uow.governance.active_workflows()}
        return [
            {
                "key": r["key"],
                "version": r["version"],
                "case_type": r["case_type"],
                "source_name": r["source_name"],
                "checksum": r["checksum"],
                "created_at": r["created_at"],
                "active": (r["key"], r["version"]) in active,
            }
            for r in rows
        ]

    def store(
        self, text: str, source: str, now: datetime, baseline: bool = False
    ) -> tuple[Workflow, bool]:
        """Validate and store a definition version; returns (workflow, newly stored).

        ``baseline`` (install time only) activates it where no version of its key is
        active yet; any other activation is an approved change (services/governance).
        """
        with self._uow() as uow:
            workflow, new = self.add_version(uow, text, source, now)
            if baseline and uow.governance.active_workflow(workflow.key) is None:
                uow.governance.activate_workflow(
                    workflow.key, workflow.version, "system", now, None
                )
            uow.commit()
        with self._lock:
            self._compiled[(workflow.key, workflow.version)] = workflow
            self._latest.clear()
        return workflow, new

    def add_version(
        self, uow: UnitOfWork, text: str, source: str, now: datetime
    ) -> tuple[Workflow, bool]:
        """Validate and add a version in the caller's transaction (never commits).

        A stored version is immutable: the same key and version with other content is an
        error, so every case keeps the exact definition it started with.
        """
        workflow = self._load(text, source)
        digest = self._checksum(text)
        existing = uow.definitions.find(workflow.key, workflow.version)
        if existing is not None:
            if existing["checksum"] != digest:
                raise DefinitionInvalid(
                    [
                        DefinitionProblem(
                            source,
                            None,
                            f"{workflow.key} version {workflow.version} is already stored with "
                            "different content; give the changed definition a new version",
                        )
                    ]
                )
            return workflow, False
        uow.definitions.add(
            {
                "key": workflow.key,
                "version": workflow.version,
                "case_type": workflow.case_type,
                "source_name": source,
                "source_text": text,
                "checksum": digest,
                "created_at": now,
            }
        )
        return workflow, True
