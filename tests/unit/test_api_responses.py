from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter

from careloop.api.responses import JsonResponse


def test_case_bodies_render_to_the_bytes_fastapi_writes_for_the_same_dict() -> None:
    # FastAPI serialises a route's `Any` return value with pydantic; JsonResponse must
    # not change a single byte of what clients have been receiving.
    body = {
        "id": 12,
        "created_at": datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
        "updated_at": datetime(2026, 3, 2, 9, 0, 1, 250, tzinfo=UTC),
        "sla_due_at": None,
        "allowed_transitions": ["begin_review", "cancel"],
        "referral": {
            "patient": {"family_name": "Ó Briain-Łukasz 李", "mrn": "MRN\u2028\x00\n\"/\\"},
            "diagnoses": ["R07.9", "I10"],
            "network": True,
        },
    }

    rendered = JsonResponse(body, status_code=201).body

    assert rendered == TypeAdapter(Any).dump_json(body)
