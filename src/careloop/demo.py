"""A realistic synthetic network: clinics, specialists, payers, users and referrals
spread over every stage, created through the real use cases with a moved clock."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from careloop.bootstrap import App
from careloop.domain.access import SYSTEM_ACTOR, Actor, Role
from careloop.domain.validators import npi_check_digit
from careloop.services import accounts, approvals, attachments, cases
from careloop.services.ports import ManualClock
from careloop.services.referral_input import ReferralChanges, validate_referral

CLINICS = ("riverside-clinic", "northgate-health", "lakeview-family-practice")
SPECIALTIES = {
    "cardiology": ["I10", "I25.10", "I48.91", "R07.9"],
    "dermatology": ["L40.0", "C44.91", "L20.9"],
    "endocrinology": ["E11.9", "E03.9", "E05.90", "E66.9"],
    "gastroenterology": ["K21.9", "K50.90", "R10.9", "K58.9"],
    "neurology": ["G43.909", "G40.909", "R51.9", "G35"],
    "orthopedics": ["M17.11", "M54.50", "S83.511A", "M25.561"],
    "pulmonology": ["J45.909", "J44.9", "R06.02", "G47.33"],
    "oncology": ["C50.911", "C34.90", "D64.9", "R59.0"],
}
PAYERS = (
    ("Blue Harbor Health", "PPO"),
    ("Summit Mutual", "HMO"),
    ("State Medicaid", "Managed Care"),
    ("Medicare", "Part B"),
)
FAMILY = (
    "Garcia",
    "Nguyen",
    "Smith",
    "Johnson",
    "Okafor",
    "Kowalski",
    "Haddad",
    "Tanaka",
    "Brown",
    "Martinez",
    "Singh",
    "Olsen",
    "Moreau",
    "Rossi",
    "Kim",
    "Silva",
)
GIVEN = (
    "Ana",
    "Ben",
    "Chloe",
    "David",
    "Elena",
    "Farah",
    "George",
    "Hana",
    "Ivan",
    "Julia",
    "Kofi",
    "Lena",
    "Marco",
    "Nadia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sam",
    "Tara",
)
# Stage -> share of the demo, roughly what a live referral desk looks like.
STAGES = {
    "intake_received": 40,
    "documentation_review": 45,
    "awaiting_information": 30,
    "eligibility_verification": 35,
    "eligibility_pending": 15,
    "authorization_pending": 40,
    "clinical_triage": 40,
    "specialist_assignment": 35,
    "appointment_scheduled": 45,
    "patient_notified": 40,
    "completed": 80,
    "declined": 20,
    "cancelled": 20,
    "closed": 15,
}
ALL = ("*",)
# (username, role, clinics the user works at). Record rules follow the clinics: the
# clinic managers each see their own clinic, central staff see every clinic.
STAFF = (
    ("admin", Role.ADMINISTRATOR, ALL),
    ("irene.intake", Role.INTAKE_COORDINATOR, ALL),
    ("rory.referrals", Role.REFERRAL_COORDINATOR, ALL),
    ("dr.tess.triage", Role.CLINICAL_TRIAGE, ALL),
    ("uma.review", Role.UTILIZATION_REVIEW, ALL),
    ("sid.scheduler", Role.SCHEDULER, ALL),
    ("fay.finance", Role.FINANCE, ALL),
    ("carl.manager", Role.CLINIC_MANAGER, (CLINICS[0],)),
    ("nora.manager", Role.CLINIC_MANAGER, (CLINICS[1],)),
    ("leo.manager", Role.CLINIC_MANAGER, (CLINICS[2],)),
    ("olga.operations", Role.OPERATIONS_MANAGER, ALL),
    ("audrey.auditor", Role.AUDITOR, ALL),
)
DEMO_PASSWORD = "careloop-demo-2026"  # noqa: S105 - printed for the demo on purpose


def make_npi(rng: random.Random) -> str:
    first_nine = str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(8))
    return first_nine + str(npi_check_digit(first_nine))


def load_demo(app: App, referrals: int = 500, seed: int = 7) -> str:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    clock = ManualClock(now)
    deps = replace(app.deps, clock=clock)
    actors = _create_staff(app, deps)
    specialists = {
        s: [
            f"Dr. {rng.choice(GIVEN)} {rng.choice(FAMILY)} ({s})"
            for _ in range(
                3 if s in ("cardiology", "orthopedics", "neurology", "gastroenterology") else 2
            )
        ]
        for s in SPECIALTIES
    }
    total_weight = sum(STAGES.values())
    targets = [
        stage
        for stage, weight in STAGES.items()
        for _ in range(round(weight * referrals / total_weight))
    ]
    while len(targets) < referrals:
        targets.append("intake_received")
    rng.shuffle(targets)
    for target in targets[:referrals]:
        _create_one(deps, clock, rng, actors, specialists, target, now)
    token = accounts.create_token(app.deps, SYSTEM_ACTOR, "admin", "demo", timedelta(days=30))
    return _sign_in_text(app, referrals, token, sum(len(v) for v in specialists.values()))


def _create_staff(app: App, deps: Any) -> dict[str, Actor]:
    actors: dict[str, Actor] = {}
    for username, role, clinics in STAFF:
        user_id = accounts.add_user(
            deps,
            SYSTEM_ACTOR,
            app.hashing,
            username,
            username.replace(".", " ").title(),
            [role.value],
            DEMO_PASSWORD,
            locations=clinics,
        )
        actors.setdefault(
            role.value,
            Actor(user_id, username, frozenset({role.value}), "demo", locations=frozenset(clinics)),
        )
    return actors


def _referral(rng: random.Random, specialty: str) -> dict[str, Any]:
    payer, plan = rng.choice(PAYERS)
    birth = datetime(1935, 1, 1) + timedelta(days=rng.randint(0, 365 * 85))
    urgency = rng.choices(("routine", "urgent", "emergent"), (75, 21, 4))[0]
    return {
        "patient": {
            "family_name": rng.choice(FAMILY),
            "given_name": rng.choice(GIVEN),
            "birth_date": birth.date().isoformat(),
            "sex": rng.choice(("female", "male")),
            "mrn": f"MRN{rng.randint(100000, 999999)}",
            "member_id": f"M{rng.randint(10000000, 99999999)}",
            "phone": f"+1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
            "postal_code": f"{rng.randint(10000, 99999)}",
        },
        "referring_provider": {
            "name": f"Dr. {rng.choice(GIVEN)} {rng.choice(FAMILY)}",
            "npi": make_npi(rng),
            "organization": "Primary Care Group",
        },
        "specialty": specialty,
        "urgency": urgency,
        "reason": f"Evaluation and management for {specialty} concern",
        "diagnoses": rng.sample(SPECIALTIES[specialty], k=rng.randint(1, 2)),
        "payer": {"name": payer, "plan": plan, "member_id": f"P{rng.randint(1000000, 9999999)}"},
        "network_status": rng.choices(("in_network", "out_of_network"), (85, 15))[0],
        "clinic": rng.choice(CLINICS),
        "channel": rng.choice(("fax", "email", "portal", "fhir", "hl7", "payer", "web")),
    }


_MAIN_PATH = (
    "begin_review",
    "documentation_complete",
    "eligibility",
    "triage_accept",
    "schedule_appointment",
    "notify_patient",
    "complete",
)
_PATHS: dict[str, tuple[str, ...]] = {
    "intake_received": (),
    "documentation_review": _MAIN_PATH[:1],
    "awaiting_information": ("begin_review", "request_information"),
    "eligibility_verification": _MAIN_PATH[:2],
    "eligibility_pending": (*_MAIN_PATH[:2], "payer_unreachable"),
    "authorization_pending": (*_MAIN_PATH[:2], "eligible_authorization_required"),
    "clinical_triage": _MAIN_PATH[:3],
    "specialist_assignment": _MAIN_PATH[:4],
    "appointment_scheduled": _MAIN_PATH[:5],
    "patient_notified": _MAIN_PATH[:6],
    "completed": _MAIN_PATH,
    "declined": (*_MAIN_PATH[:3], "triage_decline"),
    "cancelled": ("begin_review", "cancel"),
    "closed": ("begin_review", "request_information", "close_unresponsive"),
}
_REASONS = {
    "request_information": "Referral letter missing the imaging report",
    "payer_unreachable": "Payer portal down; phone queue over 60 minutes",
    "triage_decline": "Condition manageable in primary care; advice sent",
    "cancel": "Patient chose another provider",
    "close_unresponsive": "No response after three contact attempts",
}


def _create_one(
    deps: Any,
    clock: ManualClock,
    rng: random.Random,
    actors: dict[str, Actor],
    specialists: dict[str, list[str]],
    target: str,
    now: datetime,
) -> None:
    specialty = rng.choice(list(SPECIALTIES))
    path = _PATHS[target]
    # Older referrals for later stages: each step takes hours to days.
    age_hours = rng.uniform(1, 20) + len(path) * rng.uniform(4, 60)
    clock.set(now - timedelta(hours=age_hours))
    data = _referral(rng, specialty)
    if target in (
        "clinical_triage",
        "specialist_assignment",
        "appointment_scheduled",
        "patient_notified",
        "completed",
        "declined",
    ):
        data["network_status"] = "in_network"
    channel_actor = actors[Role.INTAKE_COORDINATOR.value]
    case, _ = cases.create_referral(deps, channel_actor, validate_referral(data))
    for step in path:
        clock.advance(hours=rng.uniform(1, min(48.0, max(1.5, age_hours / (len(path) + 1)))))
        if step == "documentation_complete":
            attachments.add_document(
                deps,
                channel_actor,
                case.id,
                "referral_letter",
                "referral.pdf",
                "application/pdf",
                b"%PDF-1.4\n% synthetic referral letter\n",
            )
        name, changes = step, None
        if step == "eligibility":
            name = "eligible_no_authorization"
        elif step == "schedule_appointment":
            when = now + timedelta(days=rng.randint(1, 30), hours=rng.randint(8, 16))
            changes = ReferralChanges(
                specialist=rng.choice(specialists[specialty]), appointment_at=when
            )
        workflow = deps.workflows.get(case.workflow_key, case.workflow_version)
        roles = workflow.transitions[name].roles
        actor = next(a for role, a in actors.items() if role in roles)
        case = cases.transition_case(
            deps, actor, case.id, name, case.version, _REASONS.get(name), changes
        )
    if case.state == "authorization_pending":
        # The payer's answer is in; utilization review has the request in its queue.
        approvals.request_approval(
            deps,
            actors[Role.REFERRAL_COORDINATOR.value],
            case.id,
            "authorization_approved",
            "Prior authorization submitted to the payer",
        )
    if (
        rng.random() < 0.6
        and not deps.workflows.get(case.workflow_key, case.workflow_version)
        .states[case.state]
        .terminal
    ):
        coordinator = actors[Role.REFERRAL_COORDINATOR.value]
        case = cases.assign_case(
            deps,
            coordinator,
            case.id,
            case.version,
            rng.choice(("irene.intake", "rory.referrals", "uma.review", "sid.scheduler")),
        )


def _sign_in_text(app: App, referrals: int, token: str, specialists: int) -> str:
    users = ", ".join(name for name, _, _ in STAFF)
    return (
        f"Demo network loaded: {len(CLINICS)} clinics, {len(SPECIALTIES)} specialties, "
        f"{specialists} specialists, {len(PAYERS)} payers, {referrals} referrals.\n"
        f"Users (password '{DEMO_PASSWORD}'): {users}\n"
        f"Admin API token (valid 30 days, shown once): {token}\n"
        f"Try: curl -H 'Authorization: Bearer {token}' "
        f"'http://{app.settings.host}:{app.settings.port}/api/v1/referrals?limit=5'\n"
        f"Or sign in for a session token: POST /api/v1/auth/login\n"
        f"API docs: http://{app.settings.host}:{app.settings.port}/docs"
    )
