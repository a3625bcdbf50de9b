"""Field rules: what of a reachable case a role may see.

Two kinds of rule, both data: a role may have a *category hidden* (clinical content:
reason, diagnoses, clinical notes) or *identifiers masked* to their last four
characters (enough to confirm a patient on the phone, not enough to misuse). An actor
with several roles sees a field if any of its roles may. Masking happens on the way
out of a use case; stored data is never changed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from careloop.domain.access import ROLE_NAMES, Actor, Role

HIDDEN = None
MASK_PREFIX = "****"
VISIBLE_TAIL = 4

# Paths into the referral payload, by category.
CLINICAL_FIELDS: tuple[str, ...] = ("reason", "diagnoses", "clinical_notes")
IDENTIFIER_FIELDS: tuple[str, ...] = (
    "patient.mrn",
    "patient.member_id",
    "payer.member_id",
    "payer.group_number",
    "authorization_number",
)


@dataclass(frozen=True)
class FieldRule:
    hide_clinical: bool = False
    mask_identifiers: bool = False
    # Identifiers the role needs in full even when it masks the rest (finance works
    # eligibility with the member ID).
    needs: frozenset[str] = frozenset()


FIELD_RULES: dict[Role, FieldRule] = {
    Role.FINANCE: FieldRule(
        hide_clinical=True,
        mask_identifiers=True,
        needs=frozenset({"patient.member_id", "payer.member_id", "payer.group_number"}),
    ),
    Role.SCHEDULER: FieldRule(mask_identifiers=True),
    Role.AUDITOR: FieldRule(hide_clinical=True, mask_identifiers=True),
    Role.OPERATIONS_MANAGER: FieldRule(hide_clinical=True, mask_identifiers=True),
}
_FULL = FieldRule()


@dataclass(frozen=True)
class FieldView:
    """The effective field rule of one actor (the most permissive of its roles)."""

    hidden: frozenset[str]
    masked: frozenset[str]

    @property
    def unrestricted(self) -> bool:
        return not (self.hidden or self.masked)

    @property
    def hides_clinical(self) -> bool:
        return bool(self.hidden)


def view_of(actor: Actor) -> FieldView:
    rules = [FIELD_RULES.get(Role(role), _FULL) for role in actor.roles if role in ROLE_NAMES]
    if not rules:
        rules = [FieldRule(hide_clinical=True, mask_identifiers=True)]
    hidden = (
        frozenset(CLINICAL_FIELDS) if all(rule.hide_clinical for rule in rules) else frozenset()
    )
    masked = frozenset(
        path
        for path in IDENTIFIER_FIELDS
        if all(rule.mask_identifiers and path not in rule.needs for rule in rules)
    )
    return FieldView(hidden=hidden, masked=masked)


def mask_value(value: object) -> str:
    text = str(value)
    return MASK_PREFIX + text[-VISIBLE_TAIL:] if len(text) > VISIBLE_TAIL else MASK_PREFIX


def mask_data(view: FieldView, data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``data`` with the view's fields hidden or masked, and the paths touched."""
    if view.unrestricted:
        return data, []
    masked = copy.deepcopy(data)
    touched: list[str] = []
    for path in sorted(view.hidden | view.masked):
        parent, _, name = path.rpartition(".")
        holder = _find(masked, parent)
        if holder is None or holder.get(name) in (None, "", []):
            continue
        holder[name] = HIDDEN if path in view.hidden else mask_value(holder[name])
        touched.append(path)
    return masked, touched


def mask_summaries(view: FieldView, rows: list[dict[str, Any]]) -> None:
    """Mask work-queue rows in place: their ``patient_ref`` is the MRN."""
    if "patient.mrn" not in view.masked:
        return
    for row in rows:
        if row.get("patient_ref"):
            row["patient_ref"] = mask_value(row["patient_ref"])


def _find(data: dict[str, Any], path: str) -> dict[str, Any] | None:
    node: Any = data
    for part in path.split(".") if path else ():
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None
