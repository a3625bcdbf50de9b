"""Field encryption at rest: case create + get with encryption on vs off, same run.

careloop (on): ``create_referral`` then ``CaseRepository.get`` in a read unit of work,
with CARELOOP_FIELD_KEYS set: the member IDs are sealed with AES-256-GCM on the way in,
the search text carries a blind index token, and the get opens them again.
baseline (off): the same loop on an identical database without keys, as careloop runs
by default. Both sides run in one thread against their own database (a SQLite file, a
PostgreSQL schema), taking turns case by case so drift in the machine hits both.

Also printed: the cipher's own cost per referral payload (seal + open), so the ratio
can be read as "crypto" versus "everything else".

    python bench/field_crypto.py [--quick] [--backend sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

POOL = 256
KEYS = {  # fixed keys: a benchmark, not a deployment (k2 active, k1 still listed)
    "field_keys": f"k2:{base64.b64encode(b'B' * 32).decode()},"
    f"k1:{base64.b64encode(b'A' * 32).decode()}",
    "field_index_key": base64.b64encode(b"I" * 32).decode(),
}


def _step(app: Any) -> Callable[[int], None]:
    from careloop.domain.access import Actor
    from careloop.services.cases import create_referral
    from careloop.services.referral_input import validate_referral

    referrals = [validate_referral(c.referral_payload(i)) for i in range(POOL)]
    actor = Actor(user_id=1, username="bench", roles=frozenset({"administrator"}),
                  source_address="127.0.0.1", locations=frozenset({"*"}))

    def step(i: int) -> None:
        case, _ = create_referral(app.deps, actor, referrals[i % POOL])
        with app.deps.read_uow() as work:
            work.cases.get(case.id)

    return step


def _interleaved(steps: dict[str, Callable[[int], None]], seconds: float) -> dict[str, float]:
    """Cases per second (create + get) of each side, the sides taking turns case by case
    so a busy neighbour or a checkpoint slows both alike."""
    done = 0
    spent = dict.fromkeys(steps, 0.0)
    for step in steps.values():  # warm: caches, audit chain heads, pool
        for i in range(50):
            step(i)
    while sum(spent.values()) < seconds:
        for name, step in steps.items():
            start = time.perf_counter()
            step(done)
            spent[name] += time.perf_counter() - start
        done += 1
    return {name: done / spent[name] for name in steps}


def bench_backend(label: str, urls: dict[str, str], seconds: float) -> None:
    print(f"-- {label}: one thread, the sides alternating case by case, {seconds:g} s --")
    apps = {"on": c.build_app(urls["on"], db_pool_size=2, **KEYS),
            "off": c.build_app(urls["off"], db_pool_size=2)}
    try:
        rates = _interleaved({name: _step(app) for name, app in apps.items()}, seconds)
    finally:
        for app in apps.values():
            app.engine.dispose()
    c.line("careloop create+get, encryption on", f"{rates['on']:.0f} cases/s")
    c.line("careloop create+get, encryption off", f"{rates['off']:.0f} cases/s")
    c.line("ratio on / off", f"{100 * rates['on'] / rates['off']:.1f} % of the rate with it off")


def bench_cipher(n: int) -> None:
    from careloop.adapters.field_crypto import build_cipher

    cipher = build_cipher(KEYS["field_keys"], KEYS["field_index_key"])
    assert cipher is not None
    payloads = [c.referral_payload(i) for i in range(POOL)]
    start = time.perf_counter()
    for i in range(n):
        cipher.open_data(cipher.seal_data(payloads[i % POOL]))
        cipher.blind_index(payloads[i % POOL]["patient"]["member_id"])
    per = (time.perf_counter() - start) / n
    print("-- the cipher alone --")
    c.line("seal + open 2 member IDs + 1 blind index", f"{per * 1e6:.1f} us per referral")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    args = c.parse_args(__doc__ or "", parser)
    seconds = 2.0 if args.quick else 30.0
    c.header("field encryption at rest: create + get, on vs off")
    bench_cipher(2_000 if args.quick else 50_000)
    if args.backend in ("sqlite", "both"):
        with c.temp_dir("bench_crypto") as folder:
            urls = {side: f"sqlite:///{folder / side}.db" for side in ("on", "off")}
            bench_backend("SQLite (WAL, synchronous=FULL)", urls, seconds)
    if args.backend in ("postgres", "both"):
        problem = c.pg_problem()
        if problem:
            print(f"-- PostgreSQL skipped: unreachable ({problem}) --")
            return
        with ExitStack() as stack:
            urls = {side: stack.enter_context(c.pg_schema(f"bench_crypto_{side}"))
                    for side in ("on", "off")}
            bench_backend("PostgreSQL 1 client", urls, seconds)


if __name__ == "__main__":
    main()
