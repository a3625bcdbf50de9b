"""domain.events.coalesce_updates: several rules' field changes as one case.updated."""

from careloop.domain.events import Event, coalesce_updates


def _update(fields: dict[str, object]) -> Event:
    return Event("case.updated", {"fields": sorted(fields), "before": fields})


TASK = Event("case.task_added", {"task_id": 7}, key="task:7")


def test_one_update_is_left_as_it_is() -> None:
    events = [(_update({"queue": "a"}), "r1"), (TASK, "r2")]
    assert coalesce_updates(events, {"queue": "b"}) == [
        (events[0][0], ["r1"]),
        (TASK, ["r2"]),
    ]


def test_updates_merge_where_the_first_was_with_the_oldest_values_before() -> None:
    events = [
        (TASK, "r0"),
        (_update({"queue": "a"}), "r1"),
        (_update({"team": None}), "r2"),
        (_update({"queue": "b"}), "r3"),  # a second change of queue: its value before stays
    ]
    data = {"queue": "c", "team": "t"}
    merged = Event(
        "case.updated", {"fields": ["queue", "team"], "before": {"queue": "a", "team": None}}
    )
    assert coalesce_updates(events, data) == [(TASK, ["r0"]), (merged, ["r1", "r2", "r3"])]


def test_a_field_back_where_it_started_is_left_out_and_an_empty_update_dropped() -> None:
    events = [(_update({"priority": "normal"}), "up"), (_update({"priority": "high"}), "down")]
    assert coalesce_updates(events, {"priority": "normal"}) == []
    events.append((_update({"team": None}), "team"))
    ((merged, rules),) = coalesce_updates(events, {"priority": "normal", "team": "t"})
    assert merged.payload == {"fields": ["team"], "before": {"team": None}}
    assert rules == ["up", "down", "team"]
