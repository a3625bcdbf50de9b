"""Approval policies in the governance report: every step is a human approval."""

from __future__ import annotations

from collections.abc import Iterator

from careloop.domain.governance import StepLabel, StepRow
from careloop.services.governance_report import ActiveDefinitions


def approval_step_rows(active: ActiveDefinitions) -> Iterator[StepRow]:
    """The governance report's rows for active approval policies: every step is a
    human approval."""
    for policy_sets in active.automation.approvals.values():
        for policy_set in policy_sets:
            for policy in policy_set.policies:
                guards = sorted(policy.transitions | policy.actions)
                for step in policy.steps:
                    reviewers = "; ".join(
                        f"{group.name}: {', '.join(r.describe() for r in group.reviewers)}"
                        f" (quorum {group.quorum})"
                        for group in step.groups
                    )
                    yield StepRow(
                        "approvals",
                        policy_set.key,
                        policy_set.version,
                        f"{policy.key}/{step.name}",
                        StepLabel(step.label),
                        f"{policy.title}; guards {', '.join(guards)}; {reviewers}",
                    )
