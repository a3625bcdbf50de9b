"""Routing tables: first hit wins, every criterion, validation with lines, specialist pick."""

from __future__ import annotations

import random
from importlib import resources
from typing import Any

import pytest

from careloop import demo
from careloop.adapters.yaml_source import parse_with_lines
from careloop.domain.errors import DefinitionInvalid
from careloop.domain.routing import (
    LEAST_LOADED_SPECIALIST,
    RoutingRule,
    RoutingTable,
    SpecialistLoad,
    build_routing_table,
    pick_specialist,
    route,
)

SHIPPED = (
    resources.files("careloop.definitions")
    .joinpath("routing.yaml")
    .read_text(encoding="utf-8")
)

HEADER = "key: test-routing\nversion: 1\ncase_type: referral\nrows:\n"


def _table(rows: str) -> RoutingTable:
    data, lines = parse_with_lines(HEADER + rows, "routing.yaml")
    return build_routing_table(data, source="routing.yaml", lines=lines)


def _problems(text: str) -> list[str]:
    data, lines = parse_with_lines(text, "routing.yaml")
    with pytest.raises(DefinitionInvalid) as caught:
        build_routing_table(data, source="routing.yaml", lines=lines)
    return [str(problem) for problem in caught.value.problems]


def _referral(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "specialty": "neurology",
        "urgency": "routine",
        "payer": {"name": "Blue Harbor Health", "plan": "PPO"},
        "network_status": "in_network",
        "clinic": "riverside-clinic",
        "channel": "portal",
        "patient": {"family_name": "Garcia", "postal_code": "10001"},
    }
    data.update(overrides)
    return data


def test_first_matching_row_wins_even_when_later_rows_also_match() -> None:
    table = _table(
        "  - {when: {urgency: emergent}, queue: urgent-triage}\n"
        "  - {when: {specialty: cardiology}, queue: cardiology}\n"
        "  - {queue: general-intake}\n"
    )
    emergent_cardiology = route(table, _referral(urgency="emergent", specialty="cardiology"))
    routine_cardiology = route(table, _referral(specialty="cardiology"))

    assert (emergent_cardiology.queue, emergent_cardiology.row_index) == ("urgent-triage", 0)
    assert (routine_cardiology.queue, routine_cardiology.row_index) == ("cardiology", 1)


@pytest.mark.parametrize(
    ("criterion", "value", "matching", "other"),
    [
        ("specialty", "oncology", {"specialty": "oncology"}, {"specialty": "urology"}),
        ("urgency", "urgent", {"urgency": "urgent"}, {"urgency": "routine"}),
        ("payer", "State Medicaid", {"payer": {"name": "State Medicaid"}}, {"payer": {}}),
        (
            "network_status",
            "out_of_network",
            {"network_status": "out_of_network"},
            {"network_status": "unknown"},
        ),
        ("clinic", "northgate-health", {"clinic": "northgate-health"}, {"clinic": "elsewhere"}),
        ("zip", "'606*'", {"patient": {"postal_code": "60614"}}, {"patient": {}}),
        ("channel", "fax", {"channel": "fax"}, {"channel": "portal"}),
    ],
)
def test_each_criterion_selects_its_row(
    criterion: str, value: str, matching: dict[str, Any], other: dict[str, Any]
) -> None:
    table = _table(f"  - {{when: {{{criterion}: {value}}}, queue: hit}}\n  - {{queue: default}}\n")

    assert route(table, _referral(**matching)).queue == "hit"
    assert route(table, _referral(**other)).queue == "default"


def test_a_row_matches_only_when_every_criterion_matches() -> None:
    table = _table(
        "  - {when: {specialty: cardiology, clinic: [riverside-clinic, northgate-health]},"
        " queue: cardiology-east}\n"
        "  - {queue: default}\n"
    )

    assert route(table, _referral(specialty="cardiology", clinic="northgate-health")).queue == (
        "cardiology-east"
    )
    assert route(table, _referral(specialty="cardiology", clinic="lakeview")).queue == "default"
    assert route(table, _referral(specialty="oncology", clinic="riverside-clinic")).queue == (
        "default"
    )


def test_star_means_any_value_and_matching_ignores_case_and_spaces() -> None:
    table = _table(
        "  - {when: {payer: ' state medicaid ', specialty: '*'}, queue: medicaid-review}\n"
        "  - {queue: default}\n"
    )

    assert route(table, _referral(payer={"name": "STATE MEDICAID"})).queue == "medicaid-review"
    assert route(table, _referral(payer={"name": "State Medicaid "}, specialty=None)).queue == (
        "medicaid-review"
    )


def test_zip_patterns_match_by_prefix_or_exact_five_digits() -> None:
    table = _table(
        "  - {when: {zip: ['58*', '590*']}, queue: rural}\n"
        "  - {when: {zip: '60601'}, queue: loop}\n"
        "  - {queue: default}\n"
    )

    def queue_for(postal_code: object) -> str:
        return route(table, _referral(patient={"postal_code": postal_code})).queue

    assert queue_for("58102") == "rural"
    assert queue_for("59012-4410") == "rural"
    assert queue_for("59112") == "default"
    assert queue_for("60601-1234") == "loop"
    assert queue_for("60602") == "default"
    assert queue_for("5") == "default"  # shorter than the prefix
    assert queue_for("SW1A 1AA") == "default"
    assert queue_for(58102) == "default"  # not text: never guessed at


def test_a_case_missing_a_field_only_matches_rows_that_leave_it_open() -> None:
    table = _table(
        "  - {when: {clinic: riverside-clinic}, queue: riverside}\n"
        "  - {when: {urgency: routine}, queue: routine}\n"
        "  - {queue: default}\n"
    )
    case = _referral()
    del case["clinic"]

    assert route(table, case).queue == "routine"
    assert route(table, {}).queue == "default"


def test_a_case_matching_no_row_gets_the_default_row() -> None:
    table = _table(
        "  - {when: {specialty: cardiology}, queue: cardiology}\n"
        "  - {queue: general-intake, team: intake}\n"
    )

    decision = route(table, _referral(specialty="urology"))

    assert (decision.queue, decision.team, decision.row_index) == ("general-intake", "intake", 1)
    assert (decision.assign, decision.horizon_days) == (None, None)


def test_assignment_settings_travel_with_the_decision_and_horizon_defaults_to_14() -> None:
    table = _table(
        "  - {when: {specialty: cardiology}, queue: cardio, assign: least_loaded_specialist,"
        " horizon_days: 7}\n"
        "  - {queue: default, assign: least_loaded_specialist}\n"
    )

    cardio = route(table, _referral(specialty="cardiology"))
    other = route(table, _referral())

    assert (cardio.assign, cardio.horizon_days) == (LEAST_LOADED_SPECIALIST, 7)
    assert (other.assign, other.horizon_days) == (LEAST_LOADED_SPECIALIST, 14)


def test_indexed_routing_agrees_with_a_plain_top_to_bottom_scan() -> None:
    rng = random.Random(20260302)
    choices = {
        "specialty": ["cardiology", "oncology", "urology"],
        "urgency": ["routine", "urgent", "emergent"],
        "clinic": ["a", "b", "c"],
        "zip": ["6*", "60*", "606*", "60614", "7*"],
    }
    rows = []
    for _ in range(300):
        when = {
            name: rng.sample(values, rng.randint(1, 2))
            for name, values in choices.items()
            if rng.random() < 0.4
        }
        rows.append(RoutingRule(queue=f"q{len(rows)}", when=_frozen(when)))
    rows.append(RoutingRule(queue="default"))
    table = RoutingTable("random", 1, "referral", tuple(rows))

    for _ in range(500):
        case = {
            "specialty": rng.choice(choices["specialty"]),
            "urgency": rng.choice(choices["urgency"]),
            "clinic": rng.choice(choices["clinic"]),
            "patient": {"postal_code": rng.choice(["60614", "60701", "61000", "70000", "8"])},
        }
        expected = next(i for i, rule in enumerate(rows) if _scan_matches(rule, case))
        assert route(table, case).row_index == expected


def _frozen(when: dict[str, list[str]]) -> dict[str, frozenset[str]]:
    return {name: frozenset(values) for name, values in when.items()}


def _scan_matches(rule: RoutingRule, case: dict[str, Any]) -> bool:
    for name, allowed in rule.when.items():
        if name == "zip":
            code = case["patient"]["postal_code"]
            if not any(code.startswith(pattern.rstrip("*")) for pattern in allowed):
                return False
        elif case[name] not in allowed:
            return False
    return True


def test_a_table_built_in_code_must_still_end_with_a_catch_all_row() -> None:
    with pytest.raises(ValueError, match="catch-all"):
        RoutingTable("t", 1, "referral", (RoutingRule("q", {"urgency": frozenset({"urgent"})}),))
    with pytest.raises(ValueError, match="unknown routing criteria"):
        RoutingTable(
            "t",
            1,
            "referral",
            (RoutingRule("q", {"colour": frozenset({"x"})}), RoutingRule("default")),
        )


def test_a_table_without_a_default_row_names_the_last_row_line() -> None:
    problems = _problems(
        HEADER + "  - when: {urgency: emergent}\n"
        "    queue: urgent-triage\n"
        "  - when: {specialty: cardiology}\n"
        "    queue: cardiology\n"
    )

    assert problems == [
        "routing.yaml:7: no default row: a referral matching nothing would be unrouted; "
        "end the table with a row without 'when'"
    ]


def test_every_problem_is_reported_with_its_line_in_one_pass() -> None:
    problems = _problems(
        "key: test-routing\n"  # 1
        "version: 0\n"  # 2
        "case_type: referral\n"  # 3
        "colour: blue\n"  # 4
        "rows:\n"  # 5
        "  - when:\n"  # 6
        "      speciality: cardiology\n"  # 7
        "    queue: cardiology\n"  # 8
        "  - when:\n"  # 9
        "      specialty: [cardiology, kardiology]\n"  # 10
        "      urgency: soon\n"  # 11
        "      network_status: maybe\n"  # 12
        "      channel: pigeon\n"  # 13
        "    queue: ''\n"  # 14
        "    priority: high\n"  # 15
        "  - when:\n"  # 16
        "      zip: [60601, '6O6*', '606012']\n"  # 17
        "    queue: loop\n"  # 18
        "    horizon_days: 7\n"  # 19
        "  - queue: general-intake\n"  # 20
        "    assign: round_robin\n"  # 21
    )

    assert problems == [
        "routing.yaml:4: unknown key 'colour'",
        "routing.yaml:2: version must be a positive integer",
        "routing.yaml:7: unknown criterion 'speciality'; use one of "
        "['channel', 'clinic', 'network_status', 'payer', 'specialty', 'urgency', 'zip']",
        "routing.yaml:10: unknown specialty 'kardiology'; use one of ['cardiology', "
        "'dermatology', 'endocrinology', 'gastroenterology', 'neurology', 'oncology', "
        "'ophthalmology', 'orthopedics', 'psychiatry', 'pulmonology', 'rheumatology', 'urology']",
        "routing.yaml:11: unknown urgency 'soon'; use one of ['emergent', 'routine', 'urgent']",
        "routing.yaml:12: unknown network_status 'maybe'; use one of "
        "['in_network', 'out_of_network', 'unknown']",
        "routing.yaml:13: unknown channel 'pigeon'; use one of "
        "['api', 'email', 'fax', 'fhir', 'hl7', 'payer', 'phone', 'portal', 'web']",
        "routing.yaml:15: unknown key 'priority'",
        "routing.yaml:14: queue '' must be a non-empty lower-case name such as 'general-intake'",
        "routing.yaml:17: zip: 60601 must be a non-empty text value "
        "(quote ZIP patterns: 02134 would be read as a number)",
        "routing.yaml:17: zip: '6O6*' is not a ZIP pattern like '60601' or '606*'",
        "routing.yaml:17: zip: '606012' is not a ZIP pattern like '60601' or '606*'",
        "routing.yaml:19: horizon_days only applies with 'assign'",
        "routing.yaml:21: unknown assign 'round_robin'; use one of ['least_loaded_specialist']",
    ]


def test_rows_that_can_never_match_are_rejected() -> None:
    problems = _problems(
        HEADER + "  - {when: {specialty: [cardiology, oncology]}, queue: a}\n"  # 5
        "  - {when: {specialty: [oncology, cardiology]}, queue: b}\n"  # 6
        "  - {when: {urgency: '*'}, queue: c}\n"  # 7
        "  - {when: {urgency: urgent}, queue: d}\n"  # 8
        "  - {queue: default}\n"  # 9
    )

    assert problems == [
        "routing.yaml:6: unreachable: repeats the criteria of the row at line 5",
        "routing.yaml:8: unreachable: the row at line 7 matches every case",
        "routing.yaml:9: unreachable: the row at line 7 matches every case",
    ]


def test_odd_values_are_rejected_with_their_lines() -> None:
    problems = _problems(
        "key: Referral Routing\n"  # 1
        "version: 1\n"  # 2
        "kind: workflow\n"  # 3
        "case_type: purchase\n"  # 4
        "rows:\n"  # 5
        "  - when: {clinic: []}\n"  # 6
        "    queue: nowhere\n"  # 7
        "  - when: {urgency: [urgent, urgent, '*']}\n"  # 8
        "    queue: urgent\n"  # 9
        "    team: Team A\n"  # 10
        "  - when: {specialty: oncology}\n"  # 11
        "    queue: oncology\n"  # 12
        "    assign: least_loaded_specialist\n"  # 13
        "    horizon_days: 400\n"  # 14
        "  - when: emergent\n"  # 15
        "    queue: default\n"  # 16
        "  - just a string\n"  # 17
    )

    assert problems == [
        "routing.yaml:1: key 'Referral Routing' must be a lower-case name such as "
        "'referral-routing'",
        "routing.yaml:3: kind 'workflow' is not 'routing'",
        "routing.yaml:4: case_type 'purchase' is not 'referral'",
        "routing.yaml:6: clinic: an empty list matches nothing; use '*' for any value",
        "routing.yaml:8: urgency: 'urgent' is listed twice",
        "routing.yaml:8: urgency: '*' cannot be listed with other values",
        "routing.yaml:10: team 'Team A' must be a non-empty lower-case name such as "
        "'general-intake'",
        "routing.yaml:14: horizon_days must be a whole number of days from 1 to 365",
        "routing.yaml:15: 'when' must map criteria to values, lists of values or '*'",
        "routing.yaml:17: a row must be a mapping with 'queue' and optionally 'when'",
    ]


def test_a_document_that_is_not_a_table_is_rejected() -> None:
    assert _problems("- just\n- a list\n") == ["routing.yaml:1: a routing table must be a mapping"]
    assert _problems("key: t\nversion: 1\ncase_type: referral\nrows: []\n") == [
        "routing.yaml:4: rows must be a non-empty list"
    ]
    assert _problems("version: 1\nrows: [{queue: default}]\n") == [
        "routing.yaml:1: missing required key 'case_type'",
        "routing.yaml:1: missing required key 'key'",
    ]


def _shipped() -> RoutingTable:
    data, lines = parse_with_lines(SHIPPED, "referral-routing.yaml")
    return build_routing_table(data, source="referral-routing.yaml", lines=lines)


def test_shipped_routing_table_loads_and_ends_with_general_intake() -> None:
    table = _shipped()

    assert (table.key, table.version, table.case_type) == ("referral-routing", 1, "referral")
    assert table.rows[-1].is_catch_all
    assert route(table, {}).queue == "general-intake"


@pytest.mark.parametrize(
    ("overrides", "queue"),
    [
        ({"urgency": "emergent", "network_status": "out_of_network"}, "urgent-triage"),
        ({"network_status": "out_of_network", "specialty": "cardiology"}, "network-exceptions"),
        ({"payer": {"name": "State Medicaid", "plan": "Managed Care"}}, "medicaid-review"),
        ({"payer": {"name": "State Medicaid"}, "urgency": "urgent"}, "general-intake"),
        ({"patient": {"postal_code": "58201"}, "specialty": "cardiology"}, "rural-outreach"),
        ({"specialty": "oncology", "clinic": "riverside-clinic"}, "oncology-riverside"),
        ({"specialty": "oncology", "clinic": "lakeview-family-practice"}, "oncology-northgate"),
        ({"channel": "fax"}, "document-intake"),
        ({}, "general-intake"),
    ],
)
def test_shipped_routing_table_routes_demo_referrals(overrides: dict[str, Any], queue: str) -> None:
    assert route(_shipped(), _referral(**overrides)).queue == queue


def test_shipped_table_gives_every_demo_clinic_its_own_cardiology_queue() -> None:
    table = _shipped()
    queues = set()
    for clinic in demo.CLINICS:
        decision = route(table, _referral(specialty="cardiology", clinic=clinic))
        assert decision.queue.startswith("cardiology-")
        assert (decision.assign, decision.horizon_days) == (LEAST_LOADED_SPECIALIST, 14)
        queues.add(decision.queue)
    assert len(queues) == len(demo.CLINICS)
    assert "State Medicaid" in {payer for payer, _ in demo.PAYERS}


def _load(
    name: str,
    *,
    slots: int = 5,
    workload: int = 2,
    max_workload: int = 10,
    available: bool = True,
    specialty: str = "cardiology",
    clinics: frozenset[str] = frozenset({"riverside-clinic"}),
) -> SpecialistLoad:
    return SpecialistLoad(name, specialty, clinics, slots, workload, max_workload, available)


def test_pick_specialist_prefers_the_lowest_workload_ratio() -> None:
    busy = _load("Dr. Adams", workload=6, max_workload=10)
    light = _load("Dr. Young", workload=4, max_workload=20, slots=1)

    assert pick_specialist([busy, light], "cardiology", "riverside-clinic") == light


def test_equal_load_ties_break_on_open_slots_then_name() -> None:
    fewer_slots = _load("Dr. Avery", workload=1, max_workload=3, slots=2)
    more_slots_b = _load("Dr. Blake", workload=2, max_workload=6, slots=4)
    more_slots_a = _load("Dr. Baker", workload=2, max_workload=6, slots=4)

    for order in ([fewer_slots, more_slots_b, more_slots_a], [more_slots_a, more_slots_b]):
        assert pick_specialist(order, "cardiology", "riverside-clinic") == more_slots_a
        assert pick_specialist(reversed(order), "cardiology", "riverside-clinic") == more_slots_a


def test_only_available_specialists_with_capacity_at_the_clinic_are_picked() -> None:
    chosen = _load("Dr. Zed", workload=9)
    others = [
        _load("Dr. A", available=False, workload=0),
        _load("Dr. B", slots=0, workload=0),
        _load("Dr. C", workload=10, max_workload=10),
        _load("Dr. D", workload=0, max_workload=0),
        _load("Dr. E", workload=0, clinics=frozenset({"northgate-health"})),
        _load("Dr. F", workload=0, specialty="oncology"),
    ]

    assert pick_specialist([*others, chosen], "cardiology", "riverside-clinic") == chosen


def test_no_eligible_specialist_leaves_the_case_for_a_person() -> None:
    elsewhere = _load("Dr. E", clinics=frozenset({"northgate-health"}))

    assert pick_specialist([elsewhere], "cardiology", "riverside-clinic") is None
    assert pick_specialist([], "cardiology", "riverside-clinic") is None


def test_a_case_without_a_clinic_may_go_to_any_clinic() -> None:
    elsewhere = _load("Dr. E", clinics=frozenset({"northgate-health"}))

    assert pick_specialist([elsewhere], "cardiology", None) == elsewhere


def test_negative_capacity_figures_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        _load("Dr. Minus", slots=-1)
