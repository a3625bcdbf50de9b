"""Record rules: which cases an actor reaches.

Roles decide *what* an actor may do; record rules decide *to which cases*. Each role
reaches cases one way (its ``Reach``); an actor with several roles reaches the union.
Every reach stays inside the actor's organisation. The same rule is applied twice:
as a predicate on one loaded case (``CaseScope.reaches``) and as the work-queue
query's filter (the repository translates a ``CaseScope`` into SQL), so a list never
shows a case that a direct read would refuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from careloop.domain.access import Actor, Role

ALL_LOCATIONS = "*"


class Reach(StrEnum):
    ORGANISATION = "organisation"  # every case of the organisation
    LOCATIONS = "locations"  # cases at the actor's clinics, on its teams or assigned to it
    SUBMITTED = "submitted"  # only the cases the actor submitted (external partners)


ROLE_REACH: dict[Role, Reach] = {
    Role.ADMINISTRATOR: Reach.ORGANISATION,
    Role.AUDITOR: Reach.ORGANISATION,
    Role.OPERATIONS_MANAGER: Reach.ORGANISATION,
    Role.INTEGRATION_CLIENT: Reach.SUBMITTED,
    Role.INTAKE_COORDINATOR: Reach.LOCATIONS,
    Role.REFERRAL_COORDINATOR: Reach.LOCATIONS,
    Role.CLINICAL_TRIAGE: Reach.LOCATIONS,
    Role.UTILIZATION_REVIEW: Reach.LOCATIONS,
    Role.FINANCE: Reach.LOCATIONS,
    Role.SCHEDULER: Reach.LOCATIONS,
    Role.CLINIC_MANAGER: Reach.LOCATIONS,
}


@dataclass(frozen=True)
class CaseScope:
    """The cases one actor reaches, as data both Python and SQL can apply."""

    organisation: str
    everything: bool = False
    clinics: frozenset[str] = frozenset()
    teams: frozenset[str] = frozenset()
    assignee: str | None = None
    submitted_by: int | None = None

    @property
    def nothing(self) -> bool:
        return not (
            self.everything
            or self.clinics
            or self.teams
            or self.assignee
            or self.submitted_by is not None
        )

    def reaches(
        self,
        organisation: str,
        clinic: str,
        team: str | None,
        assignee: str | None,
        created_by: int,
    ) -> bool:
        if organisation != self.organisation:
            return False
        return (
            self.everything
            or clinic in self.clinics
            or (team is not None and team in self.teams)
            or (assignee is not None and assignee == self.assignee)
            or (self.submitted_by is not None and created_by == self.submitted_by)
        )


def scope_of(actor: Actor) -> CaseScope:
    reaches = {ROLE_REACH[Role(role)] for role in actor.roles if role in ROLE_REACH}
    locations = Reach.LOCATIONS in reaches
    return CaseScope(
        organisation=actor.organisation,
        everything=Reach.ORGANISATION in reaches
        or (locations and ALL_LOCATIONS in actor.locations),
        clinics=actor.locations - {ALL_LOCATIONS} if locations else frozenset(),
        teams=actor.teams if locations else frozenset(),
        assignee=actor.username if locations else None,
        submitted_by=actor.user_id if Reach.SUBMITTED in reaches else None,
    )
