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


def test_consecutive_updates_merge_with_the_oldest_values_before() -> None:
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
    assert rules == ["team"]  # the rules whose changes it keeps


def test_no_change_moves_past_a_transition_or_a_task() -> None:
    moved = Event("case.transitioned", {"from": "a", "to": "b"})
    events = [
        (_update({"queue": "q0"}), "r1"),
        (_update({"team": "t0"}), "r2"),
        (moved, "r3"),
        (_update({"queue": "q1"}), "r4"),
        (TASK, "r5"),
        (_update({"priority": "normal"}), "r6"),
        (_update({"queue": "q2"}), "r7"),
    ]
    data = {"queue": "q3", "team": "t1", "priority": "high"}
    first = Event(
        "case.updated", {"fields": ["queue", "team"], "before": {"queue": "q0", "team": "t0"}}
    )
    last = Event(
        "case.updated",
        {"fields": ["priority", "queue"], "before": {"priority": "normal", "queue": "q2"}},
    )
    assert coalesce_updates(events, data) == [
        (first, ["r1", "r2"]),
        (moved, ["r3"]),
        (events[3][0], ["r4"]),
        (TASK, ["r5"]),
        (last, ["r6", "r7"]),
    ]


def test_a_run_is_judged_by_the_value_the_next_update_found() -> None:
    # queue goes a -> b -> a within the first run, then c after the transition: the first
    # run changed nothing, whatever the case holds at the end.
    moved = Event("case.transitioned", {"from": "x", "to": "y"})
    events = [
        (_update({"queue": "a"}), "r1"),
        (_update({"queue": "b"}), "r2"),
        (moved, "r3"),
        (_update({"queue": "a"}), "r4"),
    ]
    assert coalesce_updates(events, {"queue": "c"}) == [(moved, ["r3"]), (events[3][0], ["r4"])]
