"""Fuzzy patient matching with rapidfuzz (Jaro-Winkler) and jellyfish (phonetic codes).

Implements ``careloop.domain.matching.PatientMatcher``. Reasons never quote names,
dates or identifiers, so a score can be stored with a review task or an audit entry
without copying patient data into it.
"""

from __future__ import annotations

from collections.abc import Callable

import jellyfish
from rapidfuzz.distance import JaroWinkler

from careloop.domain.matching import MatchScore, PatientKey

# Demographic weights (sum 1.0). The birth date is the most telling field a referral
# reliably carries; the family name outweighs the given name, which is shortened and
# misspelt more often; sex and postal code mostly separate otherwise similar people.
# A field unknown on either side drops out and the others are re-weighted. Without a
# family name and a birth date on both sides, demographics count as no evidence.
FAMILY_NAME, GIVEN_NAME, BIRTH_DATE, SEX, POSTAL_CODE = 0.30, 0.20, 0.35, 0.10, 0.05
# Partial credit for birth dates keyed in wrongly rather than belonging to someone else.
DAY_MONTH_SWAPPED, ONE_DIGIT_WRONG = 0.7, 0.6
# Identifiers then move the demographic score: the same MRN from the same (or an
# unknown) issuer closes 80 % of the gap to 1; the same member ID 70 %, less because
# family members can share a subscriber ID. A different MRN from the same issuer
# halves the result, applied last so it caps any pair at 0.5: one organisation
# rarely keeps two charts for one person.
SAME_MRN_LIFT, SAME_MEMBER_ID_LIFT, OTHER_MRN_SAME_ISSUER = 0.8, 0.7, 0.5
# Given and family names entered the wrong way round score 90 % of the crossed match.
NAMES_SWAPPED = 0.9
# Jaro-Winkler at or above SIMILAR reads as a typo (Jon/John 0.93, Smyth/Smith 0.89).
# A given name below it, with the rest equal, is more often a twin or a sibling than a
# typo, so it scales the whole demographic score (nicknames are not resolved).
SIMILAR, OTHER_GIVEN_NAME = 0.8, 0.8


class FuzzyPatientMatcher:
    def __init__(self, threshold: float = 0.85, index: Callable[[str], str] | None = None) -> None:
        """``index`` is the blind index of encrypted identifiers (field encryption on):
        the member ID's blocking key then holds its token, never the ID itself."""
        if not 0.0 < threshold <= 1.0:
            raise ValueError("the duplicate threshold lies in (0, 1]")
        self.threshold = threshold
        self._index = index

    def score(self, a: PatientKey, b: PatientKey) -> MatchScore:
        reasons: list[str] = []
        score = _demographics(a, b, reasons)
        issuers_agree = not a.mrn_issuer or not b.mrn_issuer or a.mrn_issuer == b.mrn_issuer
        if a.mrn and a.mrn == b.mrn and issuers_agree:
            score += (1.0 - score) * SAME_MRN_LIFT
            reasons.append("same MRN")
        if a.member_id and a.member_id == b.member_id:
            score += (1.0 - score) * SAME_MEMBER_ID_LIFT
            reasons.append("same member ID")
        if a.mrn and b.mrn and a.mrn != b.mrn and a.mrn_issuer and a.mrn_issuer == b.mrn_issuer:
            score *= OTHER_MRN_SAME_ISSUER
            reasons.append("different MRN at the same organisation")
        score = round(min(max(score, 0.0), 1.0), 4)
        return MatchScore(score, tuple(reasons), score >= self.threshold)

    def blocking_keys(self, key: PatientKey) -> frozenset[str]:
        """Phonetic family name + birth year, phonetic name pair (survives a wrong
        year and swapped names), and each identifier."""
        keys: set[str] = set()
        family = key.family_name.replace(" ", "")
        given = key.given_name.replace(" ", "")
        year = key.birth_date[:4] if key.birth_date[:4].isdigit() else ""
        if family and year:
            keys.add(f"metaphone:{jellyfish.metaphone(family)}:{year}")
            keys.add(f"soundex:{jellyfish.soundex(family)}:{year}")
        if family and given:
            pair = sorted((jellyfish.soundex(family), jellyfish.soundex(given)))
            keys.add(f"names:{pair[0]}:{pair[1]}")
        if key.mrn:
            keys.add(f"mrn:{key.mrn}")
        if key.member_id:
            member = self._index(key.member_id) if self._index else key.member_id
            keys.add(f"member:{member}")
        return frozenset(keys)


def _demographics(a: PatientKey, b: PatientKey, reasons: list[str]) -> float:
    if not (a.family_name and b.family_name and a.birth_date and b.birth_date):
        reasons.append("family name or birth date unknown: demographics not compared")
        return 0.0
    parts, factor = _names(a, b, reasons)
    birth, birth_reason = _birth_date_similarity(a.birth_date, b.birth_date)
    parts.append((BIRTH_DATE, birth))
    reasons.append(birth_reason)
    if a.sex and b.sex and "other" not in (a.sex, b.sex):
        parts.append((SEX, 1.0 if a.sex == b.sex else 0.0))
        reasons.append("same sex" if a.sex == b.sex else "different sex")
    if a.postal_code and b.postal_code:
        postal = _postal_similarity(a.postal_code, b.postal_code)
        parts.append((POSTAL_CODE, postal))
        reasons.append(_POSTAL_REASONS[postal])
    total = sum(weight * value for weight, value in parts) / sum(weight for weight, _ in parts)
    return total * factor


def _names(
    a: PatientKey, b: PatientKey, reasons: list[str]
) -> tuple[list[tuple[float, float]], float]:
    """Weighted name similarities and a factor for the whole demographic score."""
    family = _similarity(a.family_name, b.family_name)
    if not (a.given_name and b.given_name):
        reasons.append(_name_reason("family name", family))
        return [(FAMILY_NAME, family)], 1.0
    given = _given_similarity(a.given_name, b.given_name)
    straight = (FAMILY_NAME * family + GIVEN_NAME * given) / (FAMILY_NAME + GIVEN_NAME)
    crossed = (
        _similarity(a.family_name, b.given_name) + _similarity(a.given_name, b.family_name)
    ) / 2
    if crossed * NAMES_SWAPPED > straight:
        reasons.append("given and family names swapped")
        return [(FAMILY_NAME + GIVEN_NAME, crossed * NAMES_SWAPPED)], 1.0
    reasons.append(_name_reason("family name", family))
    reasons.append(_name_reason("given name", given))
    factor = 1.0 if given >= SIMILAR else OTHER_GIVEN_NAME
    return [(FAMILY_NAME, family), (GIVEN_NAME, given)], factor


def _given_similarity(a: str, b: str) -> float:
    if len(a) == 1 or len(b) == 1:  # an initial: 'J' agrees with 'John', nothing more
        return 0.9 if a[0] == b[0] else 0.0
    return _similarity(a, b)


def _similarity(a: str, b: str) -> float:
    # Spaces dropped so 'de la cruz' and 'delacruz' compare as the same name.
    return float(JaroWinkler.normalized_similarity(a.replace(" ", ""), b.replace(" ", "")))


def _name_reason(what: str, similarity: float) -> str:
    if similarity == 1.0:
        return f"same {what}"
    return f"{'similar' if similarity >= SIMILAR else 'different'} {what} ({similarity:.2f})"


def _birth_date_similarity(a: str, b: str) -> tuple[float, str]:
    if a == b:
        return 1.0, "same birth date"
    if len(a) == len(b) == 10 and a[:5] == b[:5] and a[5:7] == b[8:] and a[8:] == b[5:7]:
        return DAY_MONTH_SWAPPED, "birth date day and month swapped"
    wrong = [i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y]
    if len(a) != len(b) or len(wrong) > 2:
        return 0.0, "different birth date"
    if len(wrong) == 1:
        return ONE_DIGIT_WRONG, "birth date differs in one digit"
    first, second = wrong
    if second == first + 1 and (a[first], a[second]) == (b[second], b[first]):
        return ONE_DIGIT_WRONG, "birth date has two adjacent digits transposed"
    return 0.0, "different birth date"


_POSTAL_REASONS = {1.0: "same postal code", 0.5: "nearby postal code", 0.0: "other postal code"}


def _postal_similarity(a: str, b: str) -> float:
    if a == b:
        return 1.0
    return 0.5 if a[:3] == b[:3] else 0.0
