"""A webhook consumer that deduplicates by webhook-id, for the worker crash test.

Delivery is at least once: a worker killed between sending a request and recording the
answer sends it again once its lease expires, under the same ``webhook-id``. A consumer
that keeps the ids it has applied turns that into exactly-once *effects*. This one does
so under a lock (as a consumer would with a unique key in its own database), applies
before answering so a crash in between leaves an applied but unacknowledged delivery,
and refuses chosen ids once with 503 so retries are in flight too.

    endpoint = DedupingEndpoint([secret], fail_first=lambda webhook_id: ...)
    receiver.route("/hook", endpoint.behaviour)
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as LibraryVerificationError

from tests.support.receivers import Exchange, respond


class DedupingEndpoint:
    """Applies each verified webhook-id once; counts what it refused and dropped."""

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        fail_first: Callable[[str], bool] = lambda _webhook_id: False,
        answer_delay: float = 0.0,
    ) -> None:
        self._webhooks = [Webhook(secret) for secret in secrets]
        self._fail_first = fail_first
        self._answer_delay = answer_delay
        self._lock = threading.Lock()
        self._effects: dict[str, dict[str, Any]] = {}
        self._applications: Counter[str] = Counter()
        self._redeliveries: Counter[str] = Counter()
        self._refused: set[str] = set()
        self._bad_signatures = 0

    def behaviour(self, exchange: Exchange) -> bool:
        request = exchange.request
        if not self._verified(request.body, request.headers):
            with self._lock:
                self._bad_signatures += 1
            return respond(401, b"bad signature")(exchange)
        webhook_id = request.headers["webhook-id"]
        with self._lock:
            if self._fail_first(webhook_id) and webhook_id not in self._refused:
                self._refused.add(webhook_id)
                status = 503
            elif webhook_id in self._effects:
                self._redeliveries[webhook_id] += 1  # seen before: acknowledge, apply nothing
                status = 204
            else:
                self._effects[webhook_id] = json.loads(request.body)
                self._applications[webhook_id] += 1
                status = 204
        if status == 204 and self._answer_delay:
            # Applied but not yet acknowledged: the window a kill -9 turns into a redelivery.
            exchange.wait(self._answer_delay)
        return respond(status)(exchange)

    def _verified(self, body: bytes, headers: dict[str, str]) -> bool:
        for webhook in self._webhooks:
            try:
                webhook.verify(body, headers, json_parse=False)
            except LibraryVerificationError:
                continue
            return True
        return False

    # -- what the consumer saw -----------------------------------------------------------

    @property
    def effects(self) -> dict[str, dict[str, Any]]:
        """The applied messages (parsed bodies) by webhook-id."""
        with self._lock:
            return dict(self._effects)

    @property
    def applied_more_than_once(self) -> list[str]:
        with self._lock:
            return sorted(key for key, count in self._applications.items() if count > 1)

    @property
    def redeliveries(self) -> int:
        """Requests for ids already applied: at-least-once delivery, dropped here."""
        with self._lock:
            return sum(self._redeliveries.values())

    @property
    def refused(self) -> set[str]:
        with self._lock:
            return set(self._refused)

    @property
    def bad_signatures(self) -> int:
        with self._lock:
            return self._bad_signatures
