"""Inbound webhooks: verified, deduplicated by webhook-id, mapped to a case event.

Verification happens before anything is written: a bad signature writes nothing (not
even an audit row a flood could fill the log with; the refusal is logged instead). An
accepted webhook becomes a ``webhook.received`` event on its case, which rules with a
``webhook_received`` trigger react to.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from careloop.domain.access import Actor
from careloop.domain.errors import FieldProblem, InvalidInput, NotFound
from careloop.domain.referral import lookup
from careloop.services.deps import Deps
from careloop.services.recording import audit

log = logging.getLogger("careloop.inbound")
Verifier = Callable[[Sequence[str], Mapping[str, str], bytes, datetime, timedelta], None]
MAX_INBOUND_BYTES = 256 * 1024


def receive_webhook(
    deps: Deps,
    verify: Verifier,
    source_key: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance: timedelta,
    source_address: str = "",
) -> dict[str, Any]:
    now = deps.clock.now()
    with deps.uow() as uow:
        source = uow.webhooks.source(source_key)
        if source is None or not source["active"]:
            raise NotFound(f"no inbound webhook source {source_key!r}")
        try:
            verify(source["secrets"], headers, body, now, tolerance)
        except Exception:
            log.warning("inbound webhook from %s refused: bad signature", source_key)
            raise
        payload = _parse(body)
        case_id = lookup(payload, source["case_field"])
        event = lookup(payload, source["event_field"])
        problems = []
        if not isinstance(case_id, int) or isinstance(case_id, bool):
            problems.append(FieldProblem(source["case_field"], "must name the case by its id"))
        if event not in source["events"]:
            problems.append(
                FieldProblem(source["event_field"], f"event must be one of {source['events']}")
            )
        if problems:
            raise InvalidInput(problems)
        assert isinstance(case_id, int)
        webhook_id = {k.lower(): v for k, v in headers.items()}["webhook-id"]
        if not uow.webhooks.remember_inbound(source_key, webhook_id, case_id, str(event), now):
            return {"accepted": False, "duplicate": True, "case_id": case_id}
        case = uow.cases.get(case_id)
        uow.outbox.add(
            case.id,
            "webhook.received",
            {
                "case_id": case.id,
                "case_type": case.case_type,
                "state": case.state,
                "version": case.version,
                "source": source_key,
                "event": event,
                "webhook_id": webhook_id,
                "data": payload,
            },
            f"inbound:{source_key}:{webhook_id}"[:200],
            now,
        )
        actor = Actor(0, f"webhook:{source_key}"[:150], frozenset(), source_address)
        audit(
            uow,
            actor,
            "webhook.inbound",
            now,
            case=case,
            category="administrative",
            detail={"source": source_key, "event": event, "webhook_id": webhook_id},
        )
        uow.commit()
    return {"accepted": True, "duplicate": False, "case_id": case_id}


def _parse(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_INBOUND_BYTES:
        raise InvalidInput([FieldProblem("body", f"larger than {MAX_INBOUND_BYTES} bytes")])
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInput([FieldProblem("body", f"not valid JSON: {error}")]) from error
    if not isinstance(payload, dict):
        raise InvalidInput([FieldProblem("body", "must be a JSON object")])
    return payload
