"""Outbound webhooks: fan-out of events to subscriptions, and the delivery loop.

Fan-out runs in the relay's transaction: each matching subscription gets a delivery
row whose message id (the ``webhook-id`` header) is the event's idempotency key, so a
retried event or a re-sent delivery carries the same id and a receiver can drop
duplicates. Delivery leases due rows, sends outside any transaction (a slow receiver
never holds a database lock), then records the attempt and what follows from it: done,
retry on the schedule, dead letter, or endpoint disabled on 410.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from careloop.domain.conditions import Condition, ConditionCompiler, ConditionError
from careloop.domain.referral import FIELDS
from careloop.domain.webhook_policy import Attempt, Decision, Outcome, decide
from careloop.services.ports import Clock, UnitOfWork, UnitOfWorkFactory

log = logging.getLogger("careloop.webhooks")
SUBSCRIPTIONS_TTL_SECONDS = 1.0
LEASE = timedelta(minutes=2)


class Sender(Protocol):
    def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> Attempt: ...


Signer = Callable[[list[str], str, datetime, bytes], dict[str, str]]


def matches_event_type(patterns: list[str], event_type: str) -> bool:
    """'case.transitioned' matches itself, 'case.*' and '*'."""
    for pattern in patterns:
        if pattern in ("*", event_type):
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


def body_of(event_type: str, message_id: str, at: datetime, data: Mapping[str, Any]) -> str:
    """The Standard Webhooks payload shape: type, timestamp, data."""
    return json.dumps(
        {"type": event_type, "timestamp": at.isoformat(), "id": message_id, "data": dict(data)},
        separators=(",", ":"),
        default=str,
    )


class WebhookFanOut:
    """Turns events into delivery rows for the subscriptions that want them."""

    def __init__(self, compile_condition: ConditionCompiler) -> None:
        self._compile = compile_condition
        self._filters: dict[str, Condition] = {}
        self._cached: tuple[float, weakref.ref[UnitOfWork] | None, list[dict[str, Any]]] = (
            float("-inf"),
            None,
            [],
        )
        self._lock = threading.Lock()

    def _subscriptions(self, work: UnitOfWork) -> list[dict[str, Any]]:
        # Read once per transaction-sized burst, not once per event: a subscription
        # added now is seen by events relayed a moment later.
        # The owner is held weakly, not by id(): a later transaction's unit of work may
        # get the id of a finished one, and would then see its stale list (a
        # subscription disabled meanwhile still looked active).
        checked, owner, rows = self._cached
        if (
            owner is not None
            and owner() is work
            and time.monotonic() - checked < SUBSCRIPTIONS_TTL_SECONDS
        ):
            return rows
        rows = work.webhooks.subscriptions(active_only=True)
        with self._lock:
            self._cached = (time.monotonic(), weakref.ref(work), rows)
        return rows

    def fan_out(self, work: UnitOfWork, event: Mapping[str, Any]) -> int:
        event_type = str(event["event_type"])
        wanted = [
            s for s in self._subscriptions(work) if matches_event_type(s["event_types"], event_type)
        ]
        if not wanted:
            return 0
        payload = dict(event["payload"])
        rows = []
        for subscription in wanted:
            if not self._passes(subscription, work, event):
                continue
            rows.append(
                _delivery(
                    subscription["id"],
                    str(event["idempotency_key"]),
                    event_type,
                    event["case_id"],
                    payload,
                    event["created_at"],
                )
            )
        return work.webhooks.enqueue(rows)

    def enqueue_custom(
        self,
        work: UnitOfWork,
        event_type: str,
        message_id: str,
        payload: Mapping[str, Any],
        at: datetime,
    ) -> int:
        """A rule's send_webhook action: a custom event type, to its subscribers."""
        rows = [
            _delivery(s["id"], message_id, event_type, payload.get("case_id"), payload, at)
            for s in work.webhooks.subscriptions(active_only=True)
            if matches_event_type(s["event_types"], event_type)
        ]
        return work.webhooks.enqueue(rows)

    def _passes(
        self, subscription: Mapping[str, Any], work: UnitOfWork, event: Mapping[str, Any]
    ) -> bool:
        source = subscription.get("filter")
        if not source or event["case_id"] is None:
            return True
        condition = self._filters.get(source)
        if condition is None:
            condition = self._compile(source, FIELDS)
            self._filters[source] = condition
        case = work.cases.get(int(event["case_id"]))
        try:
            return condition.evaluate(case.activation(event["created_at"]))
        except ConditionError:
            return False


def _delivery(
    subscription_id: int,
    message_id: str,
    event_type: str,
    case_id: object,
    payload: Mapping[str, Any],
    at: datetime,
) -> dict[str, Any]:
    return {
        "subscription_id": subscription_id,
        "message_id": message_id[:200],
        "event_type": event_type,
        "case_id": case_id,
        "body": body_of(event_type, message_id, at, payload),
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": at,
        "leased_until": None,
        "created_at": at,
    }


def deliver_once(
    uow: UnitOfWorkFactory, clock: Clock, sender: Sender, sign: Signer, batch: int = 50
) -> int:
    """Send one batch of due deliveries; returns how many were attempted."""
    with uow() as work:
        now = clock.now()
        leased = work.webhooks.lease_due(now, now + LEASE, batch)
        work.commit()
    if not leased:
        return 0
    outcomes = []
    gone: set[int] = set()  # endpoints that answered 410 in this batch: send them no more
    for delivery in leased:
        if delivery["subscription_id"] in gone:
            continue  # parked with the rest of its queue when the 410 is recorded
        sent_at = clock.now()
        body = delivery["body"].encode()
        headers = sign(list(delivery["secrets"]), delivery["message_id"], sent_at, body)
        attempt = sender.send(delivery["url"], body, headers)
        decision = decide(int(delivery["attempts"]) + 1, attempt, sent_at)
        outcomes.append((delivery, sent_at, attempt, decision))
        if decision.outcome is Outcome.DISABLE_ENDPOINT:
            gone.add(delivery["subscription_id"])
    with uow() as work:
        work.webhooks.record_attempts([_judge(work, *outcome) for outcome in outcomes])
        work.commit()
    return len(leased)


def _judge(
    work: UnitOfWork, delivery: dict[str, Any], at: datetime, attempt: Attempt, decision: Decision
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The attempt's row and the delivery's new values; disables the subscription when
    the receiver says it is gone."""
    number = int(delivery["attempts"]) + 1
    outcome: dict[str, Any] = {
        "id": delivery["id"],
        "attempts": number,
        "last_status": attempt.status_code,
        "last_error": attempt.error if attempt.error else decision.reason,
    }
    if decision.outcome is Outcome.DELIVERED:
        outcome.update(status="delivered", finished_at=at, last_error=None)
    elif decision.outcome is Outcome.RETRY:
        assert decision.next_attempt_at is not None
        outcome.update(next_attempt_at=decision.next_attempt_at)
    elif decision.outcome is Outcome.DEAD_LETTER:
        outcome.update(status="dead", finished_at=at)
        log.error("webhook delivery %s dead-lettered: %s", delivery["id"], decision.reason)
    else:
        outcome.update(status="disabled", finished_at=at)
        work.webhooks.update_subscription(
            delivery["subscription_id"],
            {"active": False, "disabled_reason": decision.reason, "updated_at": at},
        )
        work.webhooks.pending_for_subscription(delivery["subscription_id"], "disabled", at)
        log.warning(
            "webhook subscription %s disabled: %s", delivery["subscription_id"], decision.reason
        )
    row = {
        "delivery_id": delivery["id"],
        "attempt": number,
        "at": at,
        "status_code": attempt.status_code,
        "error": attempt.error,
        "latency_ms": attempt.latency_ms,
    }
    return row, outcome
