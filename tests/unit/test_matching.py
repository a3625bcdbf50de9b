"""Duplicate patient detection: fuzzy scores with reasons, phonetic blocking keys."""

from __future__ import annotations

import math
from typing import Any

import pytest

from careloop.adapters.patient_matching import FuzzyPatientMatcher
from careloop.domain.matching import MatchScore, PatientKey, PatientMatcher, normalize_name

MATCHER: PatientMatcher = FuzzyPatientMatcher()

JOHN = {
    "family_name": "Smith",
    "given_name": "John",
    "birth_date": "1980-03-04",
    "sex": "male",
    "postal_code": "60614",
}


def _key(**overrides: str) -> PatientKey:
    return PatientKey(**{**JOHN, **overrides})


def test_typos_in_given_and_family_name_still_match() -> None:
    result = MATCHER.score(_key(), _key(given_name="Jon", family_name="Smyth"))

    assert result.is_duplicate
    assert 0.85 <= result.score < 1.0
    assert "similar family name (0.89)" in result.reasons
    assert "similar given name (0.93)" in result.reasons


def test_identical_demographics_score_one() -> None:
    result = MATCHER.score(_key(), _key())

    assert (result.score, result.is_duplicate) == (1.0, True)


def test_swapped_day_and_month_count_as_partial_agreement() -> None:
    swapped = MATCHER.score(_key(), _key(birth_date="1980-04-03"))

    assert swapped.is_duplicate
    assert swapped.score < MATCHER.score(_key(), _key()).score
    assert "birth date day and month swapped" in swapped.reasons


@pytest.mark.parametrize(
    ("other", "reason"),
    [
        ("1980-03-14", "birth date differs in one digit"),
        ("1908-03-04", "birth date has two adjacent digits transposed"),
    ],
)
def test_a_mistyped_birth_date_counts_as_partial_agreement(other: str, reason: str) -> None:
    result = MATCHER.score(_key(), _key(birth_date=other))

    assert reason in result.reasons
    assert result.is_duplicate


def test_the_same_mrn_lifts_a_differently_spelt_record_over_the_threshold() -> None:
    first = _key(given_name="Katherine", mrn="RC-100234")
    second = _key(
        given_name="Catherine", family_name="Smyth", birth_date="1980-04-03", mrn="rc100234"
    )
    without_mrn = MATCHER.score(_key(given_name="Katherine"), _key(**_names_of(second)))

    with_mrn = MATCHER.score(first, second)

    assert not without_mrn.is_duplicate
    assert with_mrn.is_duplicate
    assert with_mrn.reasons[-1] == "same MRN"


def _names_of(key: PatientKey) -> dict[str, str]:
    return {
        "given_name": key.given_name,
        "family_name": key.family_name,
        "birth_date": key.birth_date,
    }


def test_the_same_member_id_is_strong_evidence() -> None:
    renamed = _key(family_name="Garcia", member_id="M12345678")

    assert not MATCHER.score(_key(), renamed).is_duplicate
    result = MATCHER.score(_key(member_id="m1234-5678"), renamed)
    assert result.is_duplicate
    assert "same member ID" in result.reasons


def test_same_name_with_a_different_birth_date_is_a_different_person() -> None:
    result = MATCHER.score(_key(), _key(birth_date="1975-11-20"))

    assert not result.is_duplicate
    assert "different birth date" in result.reasons


def test_twins_with_different_given_names_are_not_duplicates() -> None:
    result = MATCHER.score(_key(), _key(given_name="James"))

    assert not result.is_duplicate
    assert result.score < 0.8


def test_a_different_mrn_at_the_same_organisation_is_strong_counter_evidence() -> None:
    first = _key(mrn="100234", mrn_issuer="Primary Care Group")
    second = _key(mrn="100999", mrn_issuer="primary care group")

    result = MATCHER.score(first, second)

    assert result.score <= 0.5
    assert not result.is_duplicate
    assert "different MRN at the same organisation" in result.reasons


def test_mrns_from_different_organisations_neither_lift_nor_sink_the_score() -> None:
    plain = MATCHER.score(_key(), _key(birth_date="1975-11-20"))
    same_number = MATCHER.score(
        _key(mrn="100234", mrn_issuer="Riverside"),
        _key(mrn="100234", mrn_issuer="Northgate", birth_date="1975-11-20"),
    )
    other_number = MATCHER.score(
        _key(mrn="100234", mrn_issuer="Riverside"), _key(mrn="555", mrn_issuer="Northgate")
    )

    assert same_number.score == plain.score
    assert other_number.score == 1.0


def test_given_and_family_names_entered_the_wrong_way_round() -> None:
    result = MATCHER.score(_key(), _key(given_name="Smith", family_name="John"))

    assert result.is_duplicate
    assert "given and family names swapped" in result.reasons


def test_an_initial_agrees_with_the_full_given_name() -> None:
    assert MATCHER.score(_key(), _key(given_name="J.")).is_duplicate
    assert not MATCHER.score(_key(), _key(given_name="K")).is_duplicate


def test_without_family_name_or_birth_date_only_identifiers_count() -> None:
    result = MATCHER.score(_key(), _key(birth_date=""))

    assert (result.score, result.is_duplicate) == (0.0, False)
    assert result.reasons == ("family name or birth date unknown: demographics not compared",)


def test_threshold_is_inclusive_at_the_boundary() -> None:
    pair = (_key(), _key(given_name="Jon", family_name="Smyth"))
    score = FuzzyPatientMatcher().score(*pair).score

    assert FuzzyPatientMatcher(threshold=score).score(*pair).is_duplicate
    assert not FuzzyPatientMatcher(threshold=math.nextafter(score, 1.0)).score(*pair).is_duplicate
    for bad in (0.0, 1.01, -0.5):
        with pytest.raises(ValueError, match="threshold"):
            FuzzyPatientMatcher(threshold=bad)


def test_scores_are_symmetric_and_repeatable() -> None:
    others = [
        _key(given_name="Jon", family_name="Smyth"),
        _key(birth_date="1980-04-03", mrn="1", mrn_issuer="x"),
        _key(given_name="Smith", family_name="John", member_id="M1"),
        _key(given_name="J", postal_code="60699"),
    ]
    for other in others:
        first = _key(mrn="2", mrn_issuer="x", member_id="M1")
        assert MATCHER.score(first, other) == MATCHER.score(other, first)
        assert MATCHER.score(first, other) == FuzzyPatientMatcher().score(first, other)


def test_reasons_never_quote_patient_data() -> None:
    first = _key(mrn="RC100234", member_id="M99", mrn_issuer="Riverside")
    second = _key(given_name="Jon", birth_date="1980-04-03", mrn="RC100234", member_id="M99")

    text = " ".join(MATCHER.score(first, second).reasons).lower()

    for value in ("smith", "john", "jon", "1980", "rc100234", "m99", "60614", "riverside"):
        assert value not in text


def test_phonetic_variants_share_blocking_keys() -> None:
    keys = MATCHER.blocking_keys(_key())

    assert keys & MATCHER.blocking_keys(_key(family_name="Smyth", given_name="Jon"))
    assert keys & MATCHER.blocking_keys(_key(birth_date="1980-04-03"))
    # A wrong birth year or swapped names still meet on the phonetic name pair.
    assert keys & MATCHER.blocking_keys(_key(birth_date="1908-03-04"))
    assert keys & MATCHER.blocking_keys(_key(given_name="Smith", family_name="John"))
    assert not keys & MATCHER.blocking_keys(_key(family_name="Garcia", given_name="Ana"))


def test_blocking_keys_include_identifiers_so_a_renamed_record_is_still_found() -> None:
    first = MATCHER.blocking_keys(_key(mrn="RC-100234"))
    second = MATCHER.blocking_keys(
        _key(family_name="Garcia", given_name="Ana", birth_date="1990-01-01", mrn="rc100234")
    )

    assert first & second == {"mrn:RC100234"}
    assert MATCHER.blocking_keys(PatientKey()) == frozenset()


def test_patient_key_from_a_referral_is_normalised() -> None:
    referral: dict[str, Any] = {
        "patient": {
            "family_name": " Núñez-García ",
            "given_name": "O'Brien",
            "birth_date": "1980-03-04",
            "sex": "F",
            "mrn": "mrn 00-1234",
            "postal_code": "60614-1234",
        },
        "payer": {"name": "State Medicaid", "member_id": "p-7654321"},
        "referring_provider": {"organization": "Primary Care Group"},
        "specialty": "cardiology",
    }

    key = PatientKey.from_referral(referral)

    assert key == PatientKey(
        family_name="nunez garcia",
        given_name="obrien",
        birth_date="1980-03-04",
        mrn="MRN001234",
        member_id="P7654321",
        postal_code="60614",
        sex="female",
        mrn_issuer="primary care group",
    )


def test_a_referral_without_patient_data_gives_an_empty_key() -> None:
    assert PatientKey.from_referral({"specialty": "cardiology"}) == PatientKey()


def test_names_lose_case_accents_and_punctuation() -> None:
    assert normalize_name("  Zoë  D'Angelo-Smith ") == "zoe dangelo smith"


def test_value_objects_refuse_impossible_values() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        MatchScore(1.2, (), True)
    with pytest.raises(TypeError, match="birth_date"):
        PatientKey(birth_date=19800304)  # type: ignore[arg-type]
