"""The fan-out's subscription list is cached per unit of work, never across them."""

from typing import Any

from careloop.adapters.cel_conditions import compile_condition
from careloop.engine.webhooks import WebhookFanOut


class _Webhooks:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows, self.reads = rows, 0

    def subscriptions(self, active_only: bool = False) -> list[dict[str, Any]]:
        self.reads += 1
        return list(self.rows)


class _Work:
    def __init__(self, webhooks: _Webhooks) -> None:
        self.webhooks = webhooks


def test_a_new_unit_of_work_reads_afresh_even_when_it_reuses_a_finished_ones_id() -> None:
    fan_out = WebhookFanOut(compile_condition)
    store = _Webhooks([{"id": 1, "active": True}])
    first = _Work(store)
    seen = [fan_out._subscriptions(first) for _ in range(2)]  # type: ignore[arg-type]
    assert seen == [[{"id": 1, "active": True}]] * 2 and store.reads == 1
    old_id = id(first)
    del first  # freed at once (reference counting); no collection that moves memory about
    store.rows = []  # the subscription was disabled meanwhile
    # CPython hands a freed object's memory to the next object of its type and size.
    second = next(w for w in (_Work(store) for _ in range(1000)) if id(w) == old_id)
    assert fan_out._subscriptions(second) == []  # type: ignore[arg-type]
    assert store.reads == 2
