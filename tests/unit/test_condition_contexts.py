"""A CEL condition converts only the case fields it reads; it must decide exactly as if
it saw the whole case, and convert the whole case whenever it cannot tell."""

import random
import sys
import threading
from datetime import UTC, datetime

import cel
import pytest

from careloop.adapters import cel_conditions
from careloop.adapters.cel_conditions import case_fields, compile_condition
from careloop.domain.case import Case
from careloop.domain.conditions import ConditionError
from careloop.domain.referral import FIELDS
from careloop.services.referral_input import validate_referral
from tests.conftest import referral_payload

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _activation() -> dict[str, object]:
    data = validate_referral(referral_payload()).model_dump(mode="json", exclude_none=True)
    case = Case(7, "referral", "referral", 1, "intake", 3, data, NOW, NOW, NOW)
    case.document_types, case.open_tasks = ["referral_letter"], 2
    return case.activation(NOW)


@pytest.mark.parametrize(
    ("expression", "fields"),
    [
        ("case.clinic != ''", {"clinic"}),
        ("case.patient.family_name == 'x' && size(case.diagnoses) > 0", {"patient", "diagnoses"}),
        ("has(case.payer) || case . urgency == 'routine'", {"payer", "urgency"}),
        ("'case.reason' == case.clinic", {"clinic"}),
        ("case.diagnoses.exists(d, d.code != '')", {"diagnoses"}),
        ("case['clinic'] == 'x'", None),
        ("size(case) > 0", None),
        ("case.exists(k, k == 'clinic')", None),
        ("case . size() > 3", None),
        ("[1].exists(case, case > 0)", None),
        ("case.clinic == 'a\\'b'", None),
        ("case.clinic == 'x' // says case", None),
        ("case.clinic == '''x'''", None),
    ],
)
def test_a_condition_knows_which_case_fields_it_reads(
    expression: str, fields: set[str] | None
) -> None:
    assert case_fields(expression) == (None if fields is None else frozenset(fields))


@pytest.mark.parametrize(
    "expression",
    [
        "case.clinic != ''",
        "size(case.diagnoses) > 0 && case.specialty != ''",
        "case.network_status == 'in_network'",
        "!('referral_letter' in case.document_types)",
        "case.age_hours >= 0.0 && case.open_tasks == 2",
        "case.patient.family_name.startsWith('Z')",
        "has(case.team)",
        "case.team == 'x'",  # no such field in the case: an error either way
        "size(case) > 3",
    ],
)
def test_a_condition_decides_as_on_the_whole_case(expression: str) -> None:
    activation = _activation()
    condition = compile_condition(expression, FIELDS)
    whole = cel.compile(expression)
    try:
        expected: object = whole.execute(cel.Context(variables=dict(activation)))
    except Exception:
        expected = ConditionError
    try:
        got: object = condition.evaluate(activation)
    except ConditionError:
        got = ConditionError
    assert got == expected


def test_conditions_of_one_activation_share_a_conversion_per_field_set() -> None:
    activation = _activation()
    clinic = compile_condition("case.clinic != ''", FIELDS)
    also_clinic = compile_condition("case.clinic == 'nowhere'", FIELDS)
    tasks = compile_condition("case.open_tasks > 1", FIELDS)
    assert [clinic.evaluate(activation), also_clinic.evaluate(activation)] == [True, False]
    assert tasks.evaluate(activation) is True
    # A changed case is a new activation: nothing converted before is reused.
    changed = _activation()
    changed_case = changed["case"]
    assert isinstance(changed_case, dict)
    changed_case["open_tasks"] = 0
    assert tasks.evaluate(changed) is False


def _fresh_verdict(expression: str, activation: dict[str, object]) -> object:
    try:
        result: object = cel.compile(expression).execute(cel.Context(variables=activation))
    except Exception:
        return ConditionError
    return result


@pytest.mark.parametrize(
    ("expression", "field"),
    [
        ("case.open_tasks == true", "open_tasks"),  # 1 == True in Python, not in CEL
        ("case.open_tasks + 1 == 2", "open_tasks"),  # 1 and 1.0 are different CEL types
        ("1.0 / double(case.open_tasks) > 0.0", "open_tasks"),  # 0.0 and -0.0 divide apart
        ("has(case.team) || case.open_tasks == 1", "team"),  # absent is not null
        ("size(case.diagnoses) == 1", "diagnoses"),
    ],
)
def test_a_remembered_verdict_stands_only_for_values_cel_cannot_tell_apart(
    expression: str, field: str
) -> None:
    """Verdicts are remembered by the values a condition reads; values Python holds
    equal but CEL does not must each get their own, on every later evaluation too."""
    condition = compile_condition(expression, FIELDS)
    values: list[object] = [1, True, 1.0, 0, 0.0, -0.0, False, None, "1", [1], [True], ["1"]]
    for _ in range(2):  # the second round reads remembered verdicts
        for value in [*values, _ABSENT_FIELD]:
            activation = _activation()
            case = activation["case"]
            assert isinstance(case, dict)
            if value is _ABSENT_FIELD:
                case.pop(field, None)
            else:
                case[field] = value
            try:
                got: object = condition.evaluate(activation)
            except ConditionError:
                got = ConditionError
            assert got == _fresh_verdict(expression, activation), (expression, value)


_ABSENT_FIELD = object()


def test_the_same_inputs_are_not_converted_again(monkeypatch: pytest.MonkeyPatch) -> None:
    condition = compile_condition("case.clinic == 'harbor-clinic'", FIELDS)
    first = _activation()
    expected = condition.evaluate(first)
    converted: list[object] = []
    monkeypatch.setattr(
        "careloop.adapters.cel_conditions._context_for",
        lambda *args: converted.append(args) or pytest.fail("converted again"),
    )
    assert condition.evaluate(_activation()) is expected  # another activation, same clinic
    assert converted == []


def test_a_condition_on_the_age_of_the_case_is_evaluated_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """age_hours differs at every moment, so its verdicts would only fill the memory."""
    condition = compile_condition("case.age_hours > 4.0", FIELDS)
    before = len(cel_conditions._VERDICTS)
    first = _activation()
    assert condition.evaluate(first) is _fresh_verdict("case.age_hours > 4.0", first)
    assert len(cel_conditions._VERDICTS) == before
    executed: list[object] = []
    real = cel_conditions._context_for
    monkeypatch.setattr(
        cel_conditions, "_context_for", lambda *args: executed.append(args) or real(*args)
    )
    condition.evaluate(_activation())
    assert len(executed) == 1


def _held() -> int:
    """The memory's entries counted afresh: each set of values and each verdict in it."""
    return sum(1 + len(bucket) for bucket in cel_conditions._VERDICTS.values())


def _with_open_tasks(tasks: int) -> dict[str, object]:
    activation = _activation()
    case = activation["case"]
    assert isinstance(case, dict)
    case["open_tasks"] = tasks
    return activation


def test_a_full_verdict_memory_forgets_its_oldest_sets_until_a_quarter_is_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    condition = compile_condition("case.open_tasks == 1", FIELDS)  # a trial remembered
    cel_conditions.forget_verdicts()
    monkeypatch.setattr(cel_conditions, "MAX_VERDICTS", 8)
    for tasks in range(21):  # a set of values and its one verdict: two entries each
        assert condition.evaluate(_with_open_tasks(tasks)) is (tasks == 1)
        assert cel_conditions._held == _held() <= 8
    # The sets for 0..17 went two at a time, oldest first (emptying all would keep 20).
    assert [key[1] for key in cel_conditions._VERDICTS] == [(int, 18), (int, 19), (int, 20)]
    cel_conditions.forget_verdicts()


def test_the_memory_counts_every_verdict_not_only_the_sets_of_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many conditions read on one set of values fill it as much as many sets do."""
    conditions = [compile_condition(f"case.open_tasks == {k}", FIELDS) for k in range(12)]
    cel_conditions.forget_verdicts()
    monkeypatch.setattr(cel_conditions, "MAX_VERDICTS", 8)
    for _ in range(2):  # the second round finds some verdicts forgotten, and is still right
        activation = _with_open_tasks(3)
        for k, condition in enumerate(conditions):
            assert condition.evaluate(activation) is (k == 3)
            assert cel_conditions._held == _held() <= 8
    cel_conditions.forget_verdicts()


def test_threads_sharing_a_full_memory_get_right_verdicts_and_no_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker's threads and the web app's evaluate at once, and the memory is
    full all the time here: forgetting must not trip a thread that is adding."""
    cel_conditions.forget_verdicts()
    monkeypatch.setattr(cel_conditions, "MAX_VERDICTS", 64)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    conditions = [
        compile_condition(f"case.open_tasks == {k} || case.clinic == 'c{k}'", FIELDS)
        for k in range(20)
    ]
    problems: list[object] = []

    def evaluate_many(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(3000):
                tasks, clinic = rng.randrange(300), f"c{rng.randrange(30)}"
                activation = _with_open_tasks(tasks)
                case = activation["case"]
                assert isinstance(case, dict)
                case["clinic"] = clinic
                for k in rng.sample(range(20), 4):
                    if conditions[k].evaluate(activation) != (tasks == k or clinic == f"c{k}"):
                        problems.append((tasks, clinic, k))
        except Exception as error:  # what the test is for: none may escape
            problems.append(error)

    threads = [threading.Thread(target=evaluate_many, args=(seed,)) for seed in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(previous)
    assert problems == []
    assert cel_conditions._held == _held() <= 64
    cel_conditions.forget_verdicts()
