"""Rule evaluation per event with 1,000 and 10,000 active rules, vs the bare work.

careloop: what ``careloop.engine.automation.Automation`` does for one event before any
database write: ``RuleSet.candidates`` (index on trigger kind, discriminator such as the
target state, and specialty; clinic scope and replacements filtered after), the trigger
match (``_trigger_matches``), then for every candidate ``Case.activation`` and the CEL
condition through ``Verdicts.of`` (inputs recorded for the run log, then
``CelCondition.evaluate``). The rule sets are built with ``build_ruleset`` and the real
CEL compiler (``careloop.adapters.cel_conditions``), as ``load_rules_text`` would.

Rules are generated: trigger kinds weighted (transitioned 50 %, field_changed 20 %,
document_added 15 %, created 10 %, timer 5 %), to-states / from-states of the shipped
workflow, 70 % scoped to one or two of 12 specialties, 3 % of the clinic-scoped ones
layered replacements of a general rule, 80 % with a CEL condition drawn from 12
templates with random constants. Two spreads:

  locations  a bigger system has more locations, each with its own layer of rules:
             600 rules without a clinic scope at both sizes, the rest scoped to one of
             N / 25 clinics (40 clinics for 1,000 rules, 400 for 10,000), so about as
             many rules match one event at both sizes;
  fixed      40 % clinic-scoped over 12 clinics at both sizes: ten times more rules
             match each event at 10,000.

Events (a mix of transitioned, created, field_changed, document_added, timer.fired) are
drawn over 1,000 cases spread over the same specialties and clinics. Latencies are the
CPU time of the evaluating thread per event (the development machine is shared, so
wall-clock tails include other processes' time slices); careloop's wall clock is shown
too. The targets (p99 at 1,000 rules < 1 ms, p99 growth to 10,000 rules <= 3x) are
judged on CPU time. careloop's passes over the two sizes alternate in chunks of 250
events, so a change in the machine's speed meets both sizes alike.

raw baselines, for exactly the rules careloop evaluated for each event (recorded in an
untimed pass):
  * lambdas: the same conditions written as Python lambdas over one activation dict
    built once per event (results are checked equal to CEL's);
  * bare CEL, shared context: the same compiled programs executed on one
    ``cel.Context`` built once per event (the library converts the case once);
  * bare CEL, dict per rule: the programs executed with a fresh dict each, as
    ``CelCondition.evaluate`` calls them (the library converts the case every time).
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

SPECIALTIES = ("cardiology", "dermatology", "endocrinology", "gastroenterology", "neurology",
               "oncology", "orthopedics", "pulmonology", "rheumatology", "urology",
               "ophthalmology", "psychiatry")
DOCUMENT_TYPES = ("referral_letter", "clinical_notes", "lab_results", "imaging",
                  "insurance_card", "authorization", "consent", "other")
CHANGEABLE = ("urgency", "priority", "queue", "team", "specialist", "network_status",
              "appointment_at", "payer")
PAYERS = ("Blue Harbor Health", "Evergreen Mutual", "Medicare", "Medicaid", "Summit Care")
NETWORK = ("in_network", "out_of_network", "unknown")
WORDS = ("pain", "rash", "diabetes", "migraine", "nodule", "knee", "dyspnoea", "ECG")
TRIGGER_WEIGHTS = (("transitioned", 50), ("field_changed", 20), ("document_added", 15),
                   ("created", 10), ("timer", 5))
EVENT_WEIGHTS = (("case.transitioned", 55), ("case.updated", 20), ("case.document_added", 10),
                 ("case.created", 10), ("timer.fired", 5))
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
Lambda = Callable[[Mapping[str, Any]], bool]


# --- conditions: CEL text and the same test as a Python lambda -------------------------


def _condition(rng: random.Random) -> tuple[str, Lambda]:
    pick = rng.randrange(12)
    if pick == 0:
        u = rng.choice(c.URGENCIES)
        return f"case.urgency == '{u}'", lambda v, u=u: v["urgency"] == u
    if pick == 1:
        n = rng.choice(NETWORK)
        return (f"case.urgency != 'routine' && case.network_status == '{n}'",
                lambda v, n=n: v["urgency"] != "routine" and v["network_status"] == n)
    if pick == 2:
        h = rng.choice((4, 24, 48, 72, 120))
        return f"case.age_hours > {h}.0", lambda v, h=h: v["age_hours"] > h
    if pick == 3:
        d = rng.choice(DOCUMENT_TYPES)
        return f"!('{d}' in case.document_types)", lambda v, d=d: d not in v["document_types"]
    if pick == 4:
        k = rng.randint(1, 3)
        return f"size(case.diagnoses) >= {k}", lambda v, k=k: len(v["diagnoses"]) >= k
    if pick == 5:
        p = rng.choice(PAYERS)
        return f"case.payer.name == '{p}'", lambda v, p=p: v["payer"]["name"] == p
    if pick == 6:
        chans = rng.sample(c.CHANNELS, 2)
        return (f"case.channel in ['{chans[0]}', '{chans[1]}']",
                lambda v, chans=chans: v["channel"] in chans)
    if pick == 7:
        k = rng.randint(1, 4)
        return f"case.open_tasks < {k}", lambda v, k=k: v["open_tasks"] < k
    if pick == 8:
        w = rng.choice(WORDS)
        return f"case.reason.contains('{w}')", lambda v, w=w: w in v["reason"]
    if pick == 9:
        h = rng.choice((24, 72, 168))
        return (f"case.patient.sex == 'female' && case.age_hours < {h}.0",
                lambda v, h=h: v["patient"]["sex"] == "female" and v["age_hours"] < h)
    if pick == 10:
        return "case.assignee == ''", lambda v: v["assignee"] == ""
    s = rng.choice(c.OPEN_STATES)
    u = rng.choice(c.URGENCIES)
    return (f"case.state == '{s}' || case.urgency == '{u}'",
            lambda v, s=s, u=u: v["state"] == s or v["urgency"] == u)


# --- rule sets --------------------------------------------------------------------------


def _workflow() -> Any:
    from careloop.adapters.definitions import load_workflow_text, shipped_definitions

    source, text = shipped_definitions()[0]
    return load_workflow_text(text, source)


def clinics_for(spread: str, rules: int) -> tuple[tuple[str, ...], float]:
    """The clinics and the share of rules scoped to one of them."""
    if spread == "locations":
        count, scoped = max(10, rules // 25), max(0.4, 1 - 600 / rules)
    else:
        count, scoped = 12, 0.4
    return tuple(f"clinic-{i:03d}" for i in range(count)), scoped


def generate_rules(count: int, clinics: tuple[str, ...], clinic_share: float, workflow: Any,
                   seed: int) -> tuple[dict[str, Any], dict[str, Lambda]]:
    """A rule-set document and, by rule key, its condition as a lambda."""
    rng = random.Random(seed)
    kinds = [k for k, _ in TRIGGER_WEIGHTS]
    weights = [w for _, w in TRIGGER_WEIGHTS]
    states = list(workflow.states)
    open_states = [s for s, st in workflow.states.items() if not st.terminal]
    transitions = list(workflow.transitions.values())
    rules: list[dict[str, Any]] = []
    lambdas: dict[str, Lambda] = {}
    general: list[str] = []  # unscoped rule keys a scoped rule may replace
    for i in range(count):
        key = f"r{i:05d}"
        kind = rng.choices(kinds, weights)[0]
        trigger: dict[str, Any] = {"on": kind}
        if kind == "transitioned":
            if rng.random() < 0.3:
                t = rng.choice(transitions)
                trigger.update({"from": list(t.sources), "to": t.target})
            else:
                trigger["to"] = rng.choice(states)
        elif kind == "field_changed":
            trigger["field"] = rng.choice(("urgency", "priority", "queue", "team",
                                           "specialist", "network_status", "payer.plan"))
        elif kind == "document_added":
            trigger["document_type"] = rng.choice(DOCUMENT_TYPES)
        elif kind == "timer":
            trigger.update({"state": rng.choice(open_states),
                            "after": f"{rng.choice((2, 4, 8, 24))} hours"})
        rule: dict[str, Any] = {"key": key, "trigger": trigger,
                                "actions": [{"create_task": {"title": f"Follow-up {key}"}}]}
        scope: dict[str, Any] = {}
        roll = rng.random()
        if roll < 0.6:
            scope["specialty"] = rng.choice(SPECIALTIES)
        elif roll < 0.7:
            scope["specialty"] = rng.sample(SPECIALTIES, 2)
        if rng.random() < clinic_share:
            scope["clinic"] = rng.choice(clinics)
        if scope:
            rule["scope"] = scope
            if general and "clinic" in scope and rng.random() < 0.03:
                rule["replaces"] = rng.choice(general)
        else:
            general.append(key)
        if rng.random() < 0.8:
            text, fn = _condition(rng)
            rule["when"] = text
            lambdas[key] = fn
        rules.append(rule)
    document = {"key": "bench-rules", "version": 1, "case_type": "referral",
                "title": "generated", "rules": rules}
    return document, lambdas


def build_rulesets(document: dict[str, Any], workflow: Any, parts: int = 1) -> list[Any]:
    """RuleSets built from the parsed document (as ``load_rules_text`` builds them after
    parsing), split into ``parts`` sets of consecutive rules."""
    from careloop.adapters.cel_conditions import compile_condition
    from careloop.domain.referral import DATE_FIELDS, SCHEMA, SETTABLE_FIELDS
    from careloop.domain.rules_builder import RuleContext, build_ruleset

    context = RuleContext(schema=SCHEMA, workflow=workflow, settable_fields=SETTABLE_FIELDS,
                          date_fields=DATE_FIELDS)
    rules = document["rules"]
    size = -(-len(rules) // parts)
    sets = []
    for p in range(parts):
        chunk = rules[p * size:(p + 1) * size]
        keys = {r["key"] for r in chunk}
        chunk = [{k: v for k, v in r.items() if k != "replaces" or v in keys} for r in chunk]
        body = {**document, "key": f"bench-rules-{p}", "rules": chunk}
        sets.append(build_ruleset(body, source=f"generated-{p}", lines={}, context=context,
                                  compile_condition=compile_condition))
    return sets


def yaml_size(document: dict[str, Any]) -> int:
    import yaml

    return len(yaml.safe_dump({"kind": "rules", **document}, sort_keys=False,
                              default_flow_style=None, width=200).encode())


# --- events -------------------------------------------------------------------------------


@dataclass
class Sample:
    kind: Any  # TriggerKind
    event_type: str
    payload: dict[str, Any]
    case: Any  # Case
    now: datetime  # when the event is handled: the case's age_hours differs every time


def generate_events(count: int, clinics: tuple[str, ...], workflow: Any, timer_keys: list[str],
                    seed: int) -> list[Sample]:
    from careloop.domain.case import Case
    from careloop.domain.rules import EVENT_TRIGGERS

    rng = random.Random(seed)
    transitions = list(workflow.transitions.values())
    cases = []
    for i in range(1000):
        payload = c.referral_payload(i)
        payload.update(specialty=rng.choice(SPECIALTIES), clinic=rng.choice(clinics),
                       network_status=rng.choice(NETWORK))
        payload["payer"]["name"] = rng.choice(PAYERS)
        created = NOW - timedelta(hours=rng.uniform(0, 240))
        cases.append(Case(id=i + 1, case_type="referral", workflow_key="referral-standard",
                          workflow_version=1, state=rng.choice(c.OPEN_STATES), version=3,
                          data=payload, created_at=created, updated_at=created,
                          state_entered_at=created, assignee=rng.choice(("", "sam.sched")),
                          document_types=rng.sample(DOCUMENT_TYPES, rng.randint(0, 3)),
                          open_tasks=rng.randint(0, 3)))
    types = [t for t, _ in EVENT_WEIGHTS]
    weights = [w for _, w in EVENT_WEIGHTS]
    samples = []
    for _ in range(count):
        case = rng.choice(cases)
        event_type = rng.choices(types, weights)[0]
        payload: dict[str, Any] = {"case_id": case.id, "state": case.state}
        if event_type == "case.transitioned":
            t = rng.choice(transitions)
            case = Case(**{**case.__dict__, "state": t.target, "events": []})
            payload.update({"from": t.sources[0], "to": t.target, "transition": t.name})
        elif event_type == "case.updated":
            fields = rng.sample(CHANGEABLE, rng.randint(1, 2))
            payload.update({"fields": fields, "before": {f: None for f in fields}})
        elif event_type == "case.document_added":
            payload["doc_type"] = rng.choice(DOCUMENT_TYPES)
        elif event_type == "timer.fired":
            entered = case.state_entered_at.isoformat()
            payload.update({"kind": "rule", "name": rng.choice(timer_keys), "state": case.state,
                            "entered_at": entered})
        now = NOW + timedelta(seconds=len(samples) * 0.2)  # 5 events a second
        samples.append(Sample(EVENT_TRIGGERS[event_type], event_type, payload, case, now))
    return samples


# --- the measured paths -----------------------------------------------------------------


def careloop_step(rulesets: Iterable[Any]) -> Callable[[Sample], list[Any]]:
    """Automation's per-event path without database writes; returns the evaluated rules."""
    from careloop.engine.automation import Verdicts, _discriminators, matching

    rulesets = tuple(rulesets)

    def step(s: Sample) -> list[Any]:
        evaluated = []
        data = s.case.data
        for ruleset in rulesets:
            candidates = ruleset.candidates(s.kind, _discriminators(s.kind, s.payload),
                                            str(data.get("specialty", "")),
                                            str(data.get("clinic", "")))
            candidates = matching(candidates, s.kind, s.payload, s.case)
            # As Automation._run_ruleset does: one activation per event, shared by its
            # rules, one verdict per distinct condition text and one reading of inputs
            # per distinct set of references on it.
            if candidates:
                verdicts = Verdicts(s.case.activation(s.now))
                for rule in candidates:
                    verdicts.of(rule.condition)
                    evaluated.append(rule)
        return evaluated

    return step


def brute_force(rulesets: Iterable[Any], s: Sample) -> list[str]:
    """Candidates by scanning every rule: checks the index gives the same answer."""
    from careloop.domain.rules import ANY
    from careloop.engine.automation import _discriminators, _trigger_matches

    keys = []
    spec, clinic = str(s.case.data["specialty"]), str(s.case.data["clinic"])
    wanted = {*_discriminators(s.kind, s.payload), ANY}
    for ruleset in rulesets:
        found = [r for r in ruleset.rules
                 if r.trigger.kind is s.kind and wanted & {*r.trigger.discriminators()}
                 and r.in_scope(spec, clinic)]
        replaced = {r.replaces for r in found if r.replaces}
        keys += [r.key for r in found if r.key not in replaced
                 and _trigger_matches(r, s.kind, s.payload, s.case)]
    return keys


def timed(samples: list[Sample], fn: Callable[[int, Sample], Any]
          ) -> tuple[list[float], list[float]]:
    """(CPU seconds of this thread, wall seconds) per event."""
    cpu, wall = time.thread_time, time.perf_counter
    cpus, walls = [], []
    gc.collect()
    for i, s in enumerate(samples):
        c0, w0 = cpu(), wall()
        fn(i, s)
        w1, c1 = wall(), cpu()
        cpus.append(c1 - c0)
        walls.append(w1 - w0)
    return cpus, walls


@dataclass
class Figures:
    """CPU time per event for every side, and careloop's wall time."""

    careloop: list[float]
    careloop_wall: list[float]
    lambdas: list[float]
    cel_shared: list[float]
    cel_dict: list[float]
    evaluated: list[int]
    mismatches: int
    index_mismatches: int


@dataclass
class Timed:
    """careloop's pass over one size's events: CPU and wall time, the rules evaluated."""

    cpu: list[float]
    wall: list[float]
    plans: list[list[Any]]


def time_careloop(sizes: dict[int, tuple[list[Any], list[Sample]]], warmup: int,
                  chunk: int = 250) -> dict[int, Timed]:
    """careloop's per-event CPU time at every size, in alternating chunks of events.
    This machine's speed drifts by up to 2x within a minute; timing one size after the
    other let the drift into the growth figure (the same code gave 3.4 and 6.1), while
    alternating chunks exposes both sizes to the same moments."""
    steps = {size: careloop_step(rulesets) for size, (rulesets, _) in sizes.items()}
    for size, (_, samples) in sizes.items():
        for s in samples[:warmup]:
            steps[size](s)
    out = {size: Timed([], [], []) for size in sizes}
    events = max(len(samples) for _, samples in sizes.values())
    for start in range(0, events, chunk):
        for size, (_, samples) in sizes.items():
            step, t = steps[size], out[size]
            cpu, wall = timed(samples[start:start + chunk],
                              lambda i, s, step=step, t=t: t.plans.append(step(s)))
            t.cpu += cpu
            t.wall += wall
    return out


def measure(rulesets: list[Any], lambdas: dict[str, Lambda], samples: list[Sample],
            careloop: Timed, checked: int = 1000) -> Figures:
    import cel

    plans = careloop.plans
    index_mismatches = sum(
        [r.key for r in plans[i]] != brute_force(rulesets, s)
        for i, s in enumerate(samples[:checked]))
    conds = [[r.condition for r in plan if r.condition is not None] for plan in plans]
    fns = [[lambdas[r.key] for r in plan if r.condition is not None] for plan in plans]
    programs = [[cond._program for cond in cs] for cs in conds]
    mismatches = 0
    for i, s in enumerate(samples[:checked]):
        view = s.case.activation(s.now)
        for cond, fn in zip(conds[i], fns[i], strict=True):
            mismatches += cond.evaluate(view) != fn(view["case"])

    def lambda_side(i: int, s: Sample) -> None:
        if fns[i]:
            view = s.case.activation(s.now)["case"]
            for fn in fns[i]:
                fn(view)

    def cel_shared_side(i: int, s: Sample) -> None:
        if programs[i]:
            context = cel.Context(variables=s.case.activation(s.now))
            for program in programs[i]:
                program.execute(context)

    def cel_dict_side(i: int, s: Sample) -> None:
        for program in programs[i]:
            program.execute(dict(s.case.activation(s.now)))

    return Figures(
        careloop=careloop.cpu,
        careloop_wall=careloop.wall,
        lambdas=timed(samples, lambda_side)[0],
        cel_shared=timed(samples, cel_shared_side)[0],
        cel_dict=timed(samples, cel_dict_side)[0],
        evaluated=[len(p) for p in plans],
        mismatches=mismatches,
        index_mismatches=index_mismatches,
    )


def timer_scan_us(rulesets: list[Any], rounds: int = 2000) -> float:
    """CPU time of ``RuleSet.timer_rules()``, which ``replan_state_timers`` calls per
    transition event (and ``replan_field_timers`` per created or updated event)."""
    t0 = time.thread_time()
    for _ in range(rounds):
        for ruleset in rulesets:
            ruleset.timer_rules()
    return (time.thread_time() - t0) / rounds * 1e6


def ms(values: list[float], p: float) -> float:
    return c.percentile(values, p) * 1000


def report(label: str, f: Figures) -> None:
    mean_eval = sum(f.evaluated) / len(f.evaluated)
    c.line(f"{label}: careloop per event, CPU", c.latency_ms(f.careloop))
    c.line("   careloop per event, wall clock", c.latency_ms(f.careloop_wall))
    c.line("   conditions evaluated per event",
           f"mean {mean_eval:.1f}, p99 {c.percentile(f.evaluated, 99):.0f}, "
           f"max {max(f.evaluated)}")
    c.line("   raw: lambdas, same rules", c.latency_ms(f.lambdas))
    c.line("   raw: bare CEL, one cel.Context per event", c.latency_ms(f.cel_shared))
    c.line("   raw: bare CEL, dict per rule (as now)", c.latency_ms(f.cel_dict))
    c.ratio_line("   ratio careloop / lambdas (p99)", c.percentile(f.careloop, 99),
                 c.percentile(f.lambdas, 99), higher_is_better=False)
    c.ratio_line("   ratio careloop / CEL shared ctx (p99)", c.percentile(f.careloop, 99),
                 c.percentile(f.cel_shared, 99), higher_is_better=False)
    checks = (f"index vs full scan: {f.index_mismatches} mismatching events; "
              f"CEL vs lambda: {f.mismatches} mismatching results")
    c.line("   checks (first 1,000 events)", checks)


def run_spread(spread: str, sizes: tuple[int, ...], events: int, warmup: int) -> None:
    from careloop.adapters.yaml_source import MAX_DEFINITION_BYTES

    workflow = _workflow()
    built: dict[int, tuple[list[Any], list[Sample]]] = {}
    documents: dict[int, tuple[dict[str, Any], dict[str, Lambda]]] = {}
    stored_bytes: dict[int, int] = {}  # dumping 10,000 rules as YAML takes seconds: once
    print(f"-- spread '{spread}': {events:,} events per size --")
    for size in sizes:
        clinics, clinic_share = clinics_for(spread, size)
        documents[size] = generate_rules(size, clinics, clinic_share, workflow, seed=size)
        t0 = time.perf_counter()
        rulesets = build_rulesets(documents[size][0], workflow)
        load = time.perf_counter() - t0
        timer_keys = [r.key for r in rulesets[0].timer_rules()] or ["none"]
        built[size] = rulesets, generate_events(events, clinics, workflow, timer_keys, seed=7)
        nbytes = stored_bytes[size] = yaml_size(documents[size][0])
        fits = "fits" if nbytes <= MAX_DEFINITION_BYTES else "exceeds"
        c.line(f"{size:,} rules, {len(clinics)} clinics",
               f"built + compiled in {load:.2f} s; as YAML {nbytes / 1e6:.2f} MB "
               f"({fits} the {MAX_DEFINITION_BYTES / 1e6:.0f} MB definition limit)")
    careloop = time_careloop(built, warmup)
    figures: dict[int, Figures] = {}
    for size in sizes:
        (rulesets, samples), (document, lambdas) = built[size], documents[size]
        figures[size] = measure(rulesets, lambdas, samples, careloop[size])
        report(f"{size:,} rules", figures[size])
        c.line("   + timer_rules() scan per transition event, CPU",
               f"{timer_scan_us(rulesets):.0f} us (replan_state_timers; O(rules))")
        if stored_bytes[size] > MAX_DEFINITION_BYTES:
            parts = -(-stored_bytes[size] // (MAX_DEFINITION_BYTES * 9 // 10))
            split = build_rulesets(document, workflow, parts)
            step = careloop_step(split)
            for s in samples[:warmup]:
                step(s)
            lat, _ = timed(samples, lambda i, s, step=step: step(s))
            c.line(f"   same rules as {parts} stored-size sets, CPU", c.latency_ms(lat))
    if len(sizes) == 2:
        small, big = sizes
        p99_small, p99_big = (c.percentile(figures[n].careloop, 99) for n in sizes)
        ratio = p99_big / p99_small
        c.target_line(f"p99({big // 1000}k) / p99({small // 1000}k), target <= 3",
                      ratio <= 3, f"{ratio:.2f}")
        c.target_line(f"p99({small // 1000}k), target < 1 ms", p99_small < 0.001,
                      f"{p99_small * 1000:.3f} ms")
        raw_ratio = (c.percentile(figures[big].cel_shared, 99)
                     / c.percentile(figures[small].cel_shared, 99))
        c.line("   same growth for bare CEL (shared ctx)", f"{raw_ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spread", choices=("locations", "fixed", "both"), default="both")
    parser.add_argument("--events", type=int, default=None, help="events per size (5,000)")
    args = c.parse_args(__doc__, parser)
    events = args.events or (300 if args.quick else 5_000)
    sizes = (1_000, 10_000)
    c.header("rule evaluation per event, careloop vs bare condition evaluation")
    for spread in ("locations", "fixed"):
        if args.spread in (spread, "both"):
            run_spread(spread, sizes, events, warmup=min(500, events // 4))


if __name__ == "__main__":
    main()
