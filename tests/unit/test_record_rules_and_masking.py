"""Record rules (which cases) and field rules (which fields), without a database."""

from __future__ import annotations

from careloop.domain.access import Actor
from careloop.domain.masking import mask_data, mask_value, view_of
from careloop.domain.record_rules import CaseScope, scope_of


def person(*roles: str, locations: tuple[str, ...] = ("north",), teams: tuple[str, ...] = (),
           organisation: str = "acme", user_id: int = 7, username: str = "pat") -> Actor:
    return Actor(user_id=user_id, username=username, roles=frozenset(roles),
                 organisation=organisation, locations=frozenset(locations),
                 teams=frozenset(teams))


def reaches(scope: CaseScope, clinic: str = "north", team: str | None = None,
            assignee: str | None = None, created_by: int = 1,
            organisation: str = "acme") -> bool:
    return scope.reaches(organisation, clinic, team, assignee, created_by)


def test_a_coordinator_reaches_cases_at_its_clinics_only() -> None:
    scope = scope_of(person("referral_coordinator", locations=("north", "east")))

    assert reaches(scope, clinic="north") and reaches(scope, clinic="east")
    assert not reaches(scope, clinic="south")


def test_a_team_member_reaches_cases_routed_to_its_team_at_any_clinic() -> None:
    scope = scope_of(person("clinical_triage", teams=("cardiology-triage",)))

    assert reaches(scope, clinic="south", team="cardiology-triage")
    assert not reaches(scope, clinic="south", team="neurology-triage")


def test_a_worker_reaches_a_case_assigned_to_it_wherever_it_is() -> None:
    scope = scope_of(person("scheduler", username="sid"))

    assert reaches(scope, clinic="south", assignee="sid")
    assert not reaches(scope, clinic="south", assignee="someone.else")


def test_an_external_partner_reaches_only_what_it_submitted() -> None:
    scope = scope_of(person("integration_client", locations=("*",), user_id=42))

    assert reaches(scope, clinic="north", created_by=42)
    assert not reaches(scope, clinic="north", created_by=1)


def test_organisation_wide_roles_stay_inside_their_organisation() -> None:
    for role in ("administrator", "auditor", "operations_manager"):
        scope = scope_of(person(role, locations=()))
        assert reaches(scope, clinic="anywhere"), role
        assert not reaches(scope, organisation="other-health"), role


def test_every_location_star_means_every_clinic_of_the_organisation() -> None:
    scope = scope_of(person("intake_coordinator", locations=("*",)))

    assert reaches(scope, clinic="south")
    assert not reaches(scope, clinic="south", organisation="other-health")


def test_an_actor_without_locations_teams_or_known_roles_reaches_nothing() -> None:
    assert scope_of(person("scheduler", locations=())).nothing is False  # its own assignments
    assert scope_of(person("no_such_role")).nothing is True


def test_several_roles_reach_the_union_of_their_rules() -> None:
    scope = scope_of(person("integration_client", "scheduler", locations=("north",), user_id=9))

    assert reaches(scope, clinic="north", created_by=1)
    assert reaches(scope, clinic="south", created_by=9)
    assert not reaches(scope, clinic="south", created_by=1)


REFERRAL = {
    "patient": {"family_name": "Okafor", "mrn": "MRN-0012345", "member_id": "XJ99887766"},
    "payer": {"name": "Evergreen", "member_id": "EV-55501234"},
    "reason": "Chest pain on exertion",
    "diagnoses": ["I20.9"],
    "authorization_number": "AUTH-778812",
}


def test_finance_sees_no_clinical_content_and_masked_mrn_but_the_member_id_it_needs() -> None:
    data, touched = mask_data(view_of(person("finance")), REFERRAL)

    assert data["reason"] is None and data["diagnoses"] is None
    assert data["patient"]["mrn"] == "****2345"
    assert data["patient"]["member_id"] == "XJ99887766"
    assert data["payer"]["member_id"] == "EV-55501234"
    assert {"reason", "diagnoses", "patient.mrn"} <= set(touched)


def test_a_scheduler_sees_clinical_content_but_identifiers_masked_to_the_last_four() -> None:
    data, _ = mask_data(view_of(person("scheduler")), REFERRAL)

    assert data["reason"] == "Chest pain on exertion"
    assert data["patient"]["mrn"] == "****2345"
    assert data["patient"]["member_id"] == "****7766"
    assert data["authorization_number"] == "****8812"


def test_clinical_roles_see_everything_and_masking_never_changes_the_stored_data() -> None:
    data, touched = mask_data(view_of(person("clinical_triage")), REFERRAL)
    assert data == REFERRAL and touched == []

    mask_data(view_of(person("auditor")), REFERRAL)
    assert REFERRAL["patient"]["mrn"] == "MRN-0012345"


def test_a_field_is_visible_when_any_of_the_actors_roles_may_see_it() -> None:
    view = view_of(person("finance", "clinical_triage"))

    assert view.unrestricted


def test_short_values_are_masked_entirely() -> None:
    assert mask_value("123") == "****"
    assert mask_value("12345") == "****2345"
