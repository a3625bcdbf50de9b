"""Notes, documents and tasks on a case: same write path, same audit and outbox."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from careloop.domain.access import Action, Actor
from careloop.domain.case import Case
from careloop.domain.errors import (
    FieldProblem,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from careloop.domain.events import Event
from careloop.domain.referral import DOCUMENT_TYPES
from careloop.services.deps import Deps
from careloop.services.ports import UnitOfWork
from careloop.services.reach import load_case
from careloop.services.recording import audit, publish_events

MAX_NOTE_CHARS = 20_000


def add_note(deps: Deps, actor: Actor, case_id: int, body: str) -> dict[str, Any]:
    actor.require(Action.CASE_NOTE)
    text = body.strip()
    if not text or len(text) > MAX_NOTE_CHARS:
        raise InvalidInput([FieldProblem("body", f"must be 1 to {MAX_NOTE_CHARS} characters")])
    now = deps.clock.now()
    with deps.uow() as uow:
        case = load_case(uow, actor, case_id, now)
        note_id = uow.cases.add_note(case_id, actor.user_id, actor.username, text, now)
        case.events.append(Event("case.note_added", {"note_id": note_id}, key=f"note:{note_id}"))
        audit(
            uow,
            actor,
            "case.note.add",
            now,
            case=case,
            category="clinical",
            detail={"note_id": note_id},
        )
        publish_events(uow, case, now)
        uow.commit()
    return {
        "id": note_id,
        "case_id": case_id,
        "author_name": actor.username,
        "body": text,
        "created_at": now,
    }


def add_document(
    deps: Deps,
    actor: Actor,
    case_id: int,
    doc_type: str,
    filename: str,
    content_type: str,
    content: bytes,
) -> dict[str, Any]:
    actor.require(Action.CASE_DOCUMENT_ADD)
    _check_document(deps, doc_type, filename, content_type, content)
    now = deps.clock.now()
    values = {
        "doc_type": doc_type,
        "filename": filename,
        "content_type": content_type,
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "content": content,
        "uploaded_by": actor.user_id,
        "created_at": now,
    }
    with deps.uow() as uow:
        case = load_case(uow, actor, case_id, now)
        document_id = uow.cases.add_document(case_id, values)
        case.events.append(
            Event(
                "case.document_added",
                {"document_id": document_id, "doc_type": doc_type, "sha256": values["sha256"]},
                key=f"document:{document_id}",
            )
        )
        audit(
            uow,
            actor,
            "case.document.add",
            now,
            case=case,
            category="document",
            detail={
                "document_id": document_id,
                "doc_type": doc_type,
                "sha256": values["sha256"],
                "size": len(content),
            },
        )
        publish_events(uow, case, now)
        uow.commit()
    values.pop("content")
    return {"id": document_id, "case_id": case_id, **values}


def _check_document(
    deps: Deps, doc_type: str, filename: str, content_type: str, content: bytes
) -> None:
    problems = []
    if doc_type not in DOCUMENT_TYPES:
        problems.append(
            FieldProblem("doc_type", f"unknown type; use one of {sorted(DOCUMENT_TYPES)}")
        )
    if not filename or len(filename) > 255 or "/" in filename or "\\" in filename:
        problems.append(FieldProblem("file", "filename must be 1-255 characters without slashes"))
    if not content:
        problems.append(FieldProblem("file", "the file is empty"))
    if problems:
        raise InvalidInput(problems)
    if len(content) > deps.max_upload_bytes:
        raise PayloadTooLarge(f"file is {len(content)} bytes; the limit is {deps.max_upload_bytes}")
    base_type = content_type.split(";")[0].strip().lower()
    if base_type not in deps.allowed_upload_types:
        accepted = list(deps.allowed_upload_types)
        raise UnsupportedMediaType(
            f"content type {base_type!r} is not accepted; use one of {accepted}"
        )
    if not _content_matches(base_type, content):
        raise UnsupportedMediaType(f"the file's content is not {base_type}")


_MAGIC = {
    "application/pdf": (b"%PDF-",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/tiff": (b"II*\x00", b"MM\x00*"),
}


def _content_matches(content_type: str, content: bytes) -> bool:
    """The declared type must match the bytes, so a renamed executable is not stored as a PDF."""
    signatures = _MAGIC.get(content_type)
    if signatures is not None:
        return content.startswith(signatures)
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def add_task(
    deps: Deps,
    actor: Actor,
    case_id: int,
    title: str,
    assignee: str | None,
    due_at: datetime | None,
) -> dict[str, Any]:
    actor.require(Action.CASE_TASK)
    title = title.strip()
    if not title or len(title) > 300:
        raise InvalidInput([FieldProblem("title", "must be 1 to 300 characters")])
    now = deps.clock.now()
    values = task_values(title, actor, now, assignee, due_at)
    with deps.uow() as uow:
        case = load_case(uow, actor, case_id, now)
        task_id = record_task(uow, actor, case, values, now)
        publish_events(uow, case, now)
        uow.commit()
    return {"id": task_id, "case_id": case_id, **values}


def task_values(
    title: str,
    actor: Actor,
    now: datetime,
    assignee: str | None = None,
    due_at: datetime | None = None,
) -> dict[str, Any]:
    """A new open task's row; titles longer than the column are cut, not refused, for
    the automation's generated titles (people's titles are checked before)."""
    return {
        "title": title[:300],
        "status": "open",
        "assignee": assignee,
        "due_at": due_at,
        "created_by": actor.user_id,
        "created_at": now,
    }


def record_task(
    uow: UnitOfWork, actor: Actor, case: Case, values: dict[str, Any], now: datetime
) -> int:
    """Add a task to ``case`` in ``uow`` with its event and audit entry; never commits."""
    task_id = uow.cases.add_task(case.id, values)
    case.events.append(
        Event(
            "case.task_added",
            {"task_id": task_id, "title": values["title"]},
            key=f"task:{task_id}",
        )
    )
    audit(uow, actor, "case.task.add", now, case=case, detail={"task_id": task_id})
    return task_id
