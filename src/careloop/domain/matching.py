"""Patient matching for duplicate referral detection: value objects and the matcher port.

Two referrals for the same patient and specialty inside the configured window are
linked, flagged and given a review task. Nothing here merges anything: a score is
evidence for a person to weigh, with the reasons that produced it.

The fuzzy implementation (rapidfuzz, jellyfish) lives in
``careloop.adapters.patient_matching``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Protocol

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
_NOT_NAME = re.compile(r"[^a-z ]+")
_NOT_IDENTIFIER = re.compile(r"[^A-Z0-9]+")
_SEXES = {"f": "female", "m": "male", "female": "female", "male": "male", "other": "other"}


def normalize_name(text: str) -> str:
    """Case, accents and punctuation removed: 'Núñez-García' -> 'nunez garcia'."""
    decomposed = unicodedata.normalize("NFKD", text)
    letters = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    spaced = letters.replace("-", " ").replace("'", "").replace("\u2019", "")
    return " ".join(_NOT_NAME.sub("", spaced).split())


def normalize_identifier(text: str) -> str:
    """Upper case, separators removed: 'mrn-00 1234' -> 'MRN001234'."""
    return _NOT_IDENTIFIER.sub("", text.upper())


@dataclass(frozen=True)
class PatientKey:
    """The demographics and identifiers a match compares, always held normalised.

    ``birth_date`` is ISO 8601 (YYYY-MM-DD). ``mrn_issuer`` is the organisation that
    assigned the MRN: two different MRNs from one issuer point to two different charts.
    Empty text means unknown.
    """

    family_name: str = ""
    given_name: str = ""
    birth_date: str = ""
    mrn: str = ""
    member_id: str = ""
    postal_code: str = ""
    sex: str = ""
    mrn_issuer: str = ""

    def __post_init__(self) -> None:
        for item in fields(self):
            if not isinstance(getattr(self, item.name), str):
                raise TypeError(f"PatientKey.{item.name} must be text")
        birth = self.birth_date.strip()
        postal = self.postal_code.strip().split("-", 1)[0]
        normalised = {
            "family_name": normalize_name(self.family_name),
            "given_name": normalize_name(self.given_name),
            "birth_date": birth[:10] if _ISO_DATE.match(birth) else birth,
            "mrn": normalize_identifier(self.mrn),
            "member_id": normalize_identifier(self.member_id),
            "postal_code": normalize_identifier(postal),
            "sex": _SEXES.get(self.sex.strip().casefold(), ""),
            "mrn_issuer": normalize_name(self.mrn_issuer),
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_referral(cls, data: Mapping[str, object]) -> PatientKey:
        """The key of a referral payload (see ``careloop.domain.referral.FIELDS``)."""
        patient = _mapping(data.get("patient"))
        payer = _mapping(data.get("payer"))
        referrer = _mapping(data.get("referring_provider"))
        return cls(
            family_name=_text(patient.get("family_name")),
            given_name=_text(patient.get("given_name")),
            birth_date=_text(patient.get("birth_date")),
            mrn=_text(patient.get("mrn")),
            member_id=_text(patient.get("member_id")) or _text(payer.get("member_id")),
            postal_code=_text(patient.get("postal_code")),
            sex=_text(patient.get("sex")),
            mrn_issuer=_text(referrer.get("organization")),
        )


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _text(value: object) -> str:
    # Dates arrive as text in payloads but as date objects from some parsers.
    return value if isinstance(value, str) else "" if value is None else str(value)


@dataclass(frozen=True)
class MatchScore:
    score: float  # 0 (different people) .. 1 (certainly the same patient)
    reasons: tuple[str, ...]
    is_duplicate: bool  # score reached the matcher's threshold: flag for review

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"a match score lies between 0 and 1, not {self.score}")


class PatientMatcher(Protocol):
    """The matching port. Implementations must be deterministic."""

    def score(self, a: PatientKey, b: PatientKey) -> MatchScore:
        """How likely ``a`` and ``b`` are the same patient, and why."""
        ...

    def blocking_keys(self, key: PatientKey) -> frozenset[str]:
        """Keys a store indexes each referral under; candidates for a new referral are
        the earlier ones sharing at least one key, so ``score`` runs on a handful of
        pairs instead of every referral. Spelling variants of one patient must share a
        key (phonetic codes), and so must referrals with the same identifier."""
        ...
