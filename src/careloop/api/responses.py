"""JSON responses rendered by orjson, for the bodies the write endpoints return.

A route that returns a plain dict pays for FastAPI's response field (validate, then
serialize); a case body is already JSON-ready, so it goes straight to bytes. The bytes
are the ones FastAPI writes for the same dict: compact UTF-8, datetimes in ISO 8601 with
UTC as "Z".
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_UTC_Z)
