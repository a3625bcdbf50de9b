"""Notes, tasks and documents on a referral over HTTP."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest

from careloop.domain.access import Role
from careloop.services.ports import ManualClock
from tests.conftest import START, make_app, referral_payload
from tests.e2e.conftest import Server, running_server

REFERRALS = "/api/v1/referrals"
PROBLEM_JSON = "application/problem+json"
PDF = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n\x00\xff\xfe binary body\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
SMALL_UPLOAD_LIMIT = 2048








@pytest.fixture(scope="module")
def small_upload_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server accepting files of at most SMALL_UPLOAD_LIMIT bytes."""
    app = make_app(f"sqlite:///{tmp_path_factory.mktemp('small') / 'careloop.db'}",
                   ManualClock(START), max_upload_bytes=SMALL_UPLOAD_LIMIT)
    with running_server(app, [Role.INTAKE_COORDINATOR]) as running:
        yield running


@pytest.fixture
def intake(shared_server: Server) -> Iterator[httpx.Client]:
    with shared_server.client("intake_coordinator") as client:
        yield client


@pytest.fixture
def case_id(intake: httpx.Client) -> int:
    return create(intake)


def create(client: httpx.Client) -> int:
    response = client.post(REFERRALS, json=referral_payload())
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def upload(client: httpx.Client, case_id: int, content: bytes,
           content_type: str = "application/pdf", doc_type: str = "referral_letter",
           filename: str = "letter.pdf") -> httpx.Response:
    return client.post(f"{REFERRALS}/{case_id}/documents", data={"doc_type": doc_type},
                       files={"file": (filename, content, content_type)})


def items(client: httpx.Client, case_id: int, part: str) -> list[dict[str, object]]:
    response = client.get(f"{REFERRALS}/{case_id}/{part}")
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["code"] == code


# --- notes ------------------------------------------------------------------------------


def test_a_note_added_to_a_referral_is_listed_with_its_author(
        intake: httpx.Client, case_id: int, shared_clock: ManualClock) -> None:
    response = intake.post(f"{REFERRALS}/{case_id}/notes",
                           json={"body": "  Called the PCP office; letter to follow.  "})

    assert response.status_code == 201, response.text
    note = response.json()
    assert note["body"] == "Called the PCP office; letter to follow."
    assert note["author_name"] == "user.intake_coordinator"
    [listed] = items(intake, case_id, "notes")
    assert listed["id"] == note["id"]
    assert listed["body"] == note["body"]
    assert datetime.fromisoformat(str(listed["created_at"])) == shared_clock.now()


def test_several_notes_can_be_added_to_one_referral(
        intake: httpx.Client, case_id: int) -> None:
    bodies = ["Called the PCP office.", "Letter received by fax.", "Patient prefers mornings."]

    for body in bodies:
        response = intake.post(f"{REFERRALS}/{case_id}/notes", json={"body": body})
        assert response.status_code == 201, f"{body!r}: {response.text}"

    assert [note["body"] for note in items(intake, case_id, "notes")] == bodies


@pytest.mark.parametrize("body", [{"body": ""}, {"body": "   "}, {}, {"body": "x" * 20_001}],
                         ids=["empty", "blank", "missing", "too-long"])
def test_an_invalid_note_is_a_422_naming_the_body_and_is_not_stored(
        intake: httpx.Client, case_id: int, body: dict[str, str]) -> None:
    response = intake.post(f"{REFERRALS}/{case_id}/notes", json=body)

    assert_problem(response, 422, "invalid_input")
    assert [e["field"] for e in response.json()["errors"]] == ["body"]
    assert items(intake, case_id, "notes") == []


def test_a_note_on_an_unknown_referral_is_a_404(intake: httpx.Client) -> None:
    response = intake.post(f"{REFERRALS}/424242/notes", json={"body": "Anyone there?"})

    assert_problem(response, 404, "not_found")


# --- tasks ------------------------------------------------------------------------------


def test_a_task_added_to_a_referral_is_listed_as_open(
        intake: httpx.Client, case_id: int) -> None:
    response = intake.post(f"{REFERRALS}/{case_id}/tasks",
                           json={"title": "Request insurance card", "assignee": "ian.intake",
                                 "due_at": "2026-03-03T17:00:00Z"})

    assert response.status_code == 201, response.text
    task = response.json()
    assert task["status"] == "open"
    [listed] = items(intake, case_id, "tasks")
    assert listed["id"] == task["id"]
    assert listed["title"] == "Request insurance card"
    assert listed["assignee"] == "ian.intake"
    assert listed["status"] == "open"
    assert listed["completed_at"] is None
    assert datetime.fromisoformat(str(listed["due_at"])) == datetime.fromisoformat(
        "2026-03-03T17:00:00+00:00")


def test_several_tasks_can_be_added_to_one_referral(
        intake: httpx.Client, case_id: int) -> None:
    titles = ["Request insurance card", "Confirm phone number"]

    for title in titles:
        response = intake.post(f"{REFERRALS}/{case_id}/tasks", json={"title": title})
        assert response.status_code == 201, f"{title!r}: {response.text}"

    assert [task["title"] for task in items(intake, case_id, "tasks")] == titles


def test_a_task_due_time_in_another_offset_is_stored_as_the_same_instant(
        intake: httpx.Client, case_id: int) -> None:
    response = intake.post(f"{REFERRALS}/{case_id}/tasks",
                           json={"title": "Call back", "due_at": "2026-03-03T09:00:00-05:00"})

    assert response.status_code == 201, response.text
    [listed] = items(intake, case_id, "tasks")
    assert datetime.fromisoformat(str(listed["due_at"])) == datetime.fromisoformat(
        "2026-03-03T14:00:00+00:00")


def test_a_task_due_time_without_a_timezone_is_a_422_not_a_server_error(
        intake: httpx.Client, case_id: int) -> None:
    response = intake.post(f"{REFERRALS}/{case_id}/tasks",
                           json={"title": "Call back", "due_at": "2026-03-03T09:00:00"})

    assert_problem(response, 422, "invalid_input")
    assert [e["field"] for e in response.json()["errors"]] == ["due_at"]
    assert items(intake, case_id, "tasks") == []


@pytest.mark.parametrize(
    ("body", "field"),
    [({"title": ""}, "title"), ({"title": "x" * 301}, "title"),
     ({"title": "Call", "due_at": "tomorrow"}, "due_at"),
     ({"title": "Call", "priority": "high"}, "priority")],
    ids=["empty-title", "long-title", "bad-due-at", "unknown-field"],
)
def test_an_invalid_task_is_a_422_naming_the_field_and_is_not_stored(
        intake: httpx.Client, case_id: int, body: dict[str, str], field: str) -> None:
    response = intake.post(f"{REFERRALS}/{case_id}/tasks", json=body)

    assert_problem(response, 422, "invalid_input")
    assert [e["field"] for e in response.json()["errors"]] == [field]
    assert items(intake, case_id, "tasks") == []


# --- documents --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "content_type", "filename"),
    [(PDF, "application/pdf", "letter.pdf"), (PNG, "image/png", "card.png"),
     ("Referral text, naïve café ✓\n".encode(), "text/plain", "letter.txt")],
    ids=["pdf", "png", "utf8-text"],
)
def test_a_downloaded_document_has_the_uploaded_bytes_and_sha256(
        intake: httpx.Client, case_id: int, content: bytes, content_type: str,
        filename: str) -> None:
    uploaded = upload(intake, case_id, content, content_type, filename=filename)

    assert uploaded.status_code == 201, uploaded.text
    document = uploaded.json()
    digest = hashlib.sha256(content).hexdigest()
    assert document["sha256"] == digest
    assert document["size"] == len(content)
    assert "content" not in document

    downloaded = intake.get(f"{REFERRALS}/{case_id}/documents/{document['id']}/content")

    assert downloaded.status_code == 200
    assert downloaded.content == content
    assert hashlib.sha256(downloaded.content).hexdigest() == digest
    assert downloaded.headers["Digest"] == f"sha-256={digest}"
    assert downloaded.headers["content-type"].startswith(content_type)
    assert downloaded.headers["X-Content-Type-Options"] == "nosniff"
    disposition = downloaded.headers["Content-Disposition"]
    assert disposition.startswith(f'attachment; filename="{filename}"; ')


def test_documents_are_listed_as_metadata_without_their_content(
        intake: httpx.Client, case_id: int) -> None:
    document = upload(intake, case_id, PDF).json()

    [listed] = items(intake, case_id, "documents")

    assert listed == {**document, "case_id": case_id}
    assert "content" not in listed


def test_several_documents_can_be_attached_to_one_referral(
        intake: httpx.Client, case_id: int) -> None:
    first = upload(intake, case_id, PDF, doc_type="referral_letter")
    second = upload(intake, case_id, PNG, "image/png", doc_type="insurance_card",
                    filename="card.png")

    assert (first.status_code, second.status_code) == (201, 201), second.text
    assert [d["doc_type"] for d in items(intake, case_id, "documents")] == [
        "referral_letter", "insurance_card"]


def test_a_document_with_a_non_latin_filename_downloads_intact(
        intake: httpx.Client, case_id: int) -> None:
    document = upload(intake, case_id, PDF, filename="紹介状.pdf").json()

    downloaded = intake.get(f"{REFERRALS}/{case_id}/documents/{document['id']}/content")

    assert downloaded.status_code == 200
    assert downloaded.content == PDF
    assert downloaded.headers["Content-Disposition"].startswith("attachment")


def test_a_document_cannot_be_downloaded_through_another_referrals_url(
        intake: httpx.Client, case_id: int) -> None:
    document = upload(intake, case_id, PDF).json()
    other_case = create(intake)

    response = intake.get(f"{REFERRALS}/{other_case}/documents/{document['id']}/content")

    assert_problem(response, 404, "not_found")


def test_an_executable_upload_is_a_415_and_is_not_stored(
        intake: httpx.Client, case_id: int) -> None:
    response = upload(intake, case_id, b"MZ\x90\x00\x03\x00\x00\x00", "application/x-msdownload",
                      doc_type="other", filename="setup.exe")

    assert_problem(response, 415, "unsupported_media_type")
    assert items(intake, case_id, "documents") == []


@pytest.mark.parametrize(
    ("content", "content_type"),
    [(b"just some text, not a PDF", "application/pdf"),
     (b"MZ\x90\x00 renamed executable", "image/png"),
     (b"\xff\xfe\x00binary\x80\x81", "text/plain")],
    ids=["text-declared-pdf", "executable-declared-png", "binary-declared-text"],
)
def test_content_that_does_not_match_its_declared_type_is_a_415_and_is_not_stored(
        intake: httpx.Client, case_id: int, content: bytes, content_type: str) -> None:
    response = upload(intake, case_id, content, content_type)

    assert_problem(response, 415, "unsupported_media_type")
    assert items(intake, case_id, "documents") == []


def test_an_unknown_document_type_is_a_422_naming_doc_type(
        intake: httpx.Client, case_id: int) -> None:
    response = upload(intake, case_id, PDF, doc_type="selfie")

    assert_problem(response, 422, "invalid_input")
    assert [e["field"] for e in response.json()["errors"]] == ["doc_type"]
    assert items(intake, case_id, "documents") == []


@pytest.mark.parametrize("filename", ["../../etc/passwd", "..\\boot.ini", "x" * 256 + ".pdf"],
                         ids=["unix-path", "windows-path", "too-long"])
def test_a_filename_with_a_path_or_too_long_is_a_422_naming_the_file(
        intake: httpx.Client, case_id: int, filename: str) -> None:
    response = upload(intake, case_id, PDF, filename=filename)

    assert_problem(response, 422, "invalid_input")
    assert [e["field"] for e in response.json()["errors"]] == ["file"]
    assert items(intake, case_id, "documents") == []


def test_an_empty_file_is_a_422_naming_the_file(intake: httpx.Client, case_id: int) -> None:
    response = upload(intake, case_id, b"")

    assert_problem(response, 422, "invalid_input")
    assert [e["field"] for e in response.json()["errors"]] == ["file"]
    assert items(intake, case_id, "documents") == []


def test_an_upload_without_a_file_is_a_422_naming_the_file(
        intake: httpx.Client, case_id: int) -> None:
    response = intake.post(f"{REFERRALS}/{case_id}/documents",
                           data={"doc_type": "referral_letter"},
                           files={"other": ("x.txt", b"x", "text/plain")})

    assert_problem(response, 422, "invalid_input")
    assert "file" in [e["field"] for e in response.json()["errors"]]


def test_a_file_just_over_the_upload_limit_is_a_413_and_is_not_stored(
        small_upload_server: Server) -> None:
    with small_upload_server.client("intake_coordinator") as client:
        case_id = create(client)

        response = upload(client, case_id, b"%PDF-" + b"0" * SMALL_UPLOAD_LIMIT)

        assert_problem(response, 413, "payload_too_large")
        assert items(client, case_id, "documents") == []


def test_a_file_at_the_upload_limit_is_accepted(small_upload_server: Server) -> None:
    content = b"%PDF-" + b"0" * (SMALL_UPLOAD_LIMIT - 5)
    with small_upload_server.client("intake_coordinator") as client:
        case_id = create(client)

        response = upload(client, case_id, content)

        assert response.status_code == 201, response.text
        assert response.json()["size"] == SMALL_UPLOAD_LIMIT


def test_an_upload_far_over_the_limit_is_refused_before_it_is_read(
        small_upload_server: Server) -> None:
    with small_upload_server.client("intake_coordinator") as client:
        case_id = create(client)

        response = upload(client, case_id, b"%PDF-" + b"0" * 200_000)

        assert_problem(response, 413, "payload_too_large")
        assert items(client, case_id, "documents") == []
