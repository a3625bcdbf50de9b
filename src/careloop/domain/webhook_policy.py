"""When to try a webhook delivery again: the retry schedule and the decision after an attempt.

Pure: the caller passes the clock reading and, for reproducible jitter, a random generator.

Policy, in order of precedence:

- 2xx: delivered (even if the response body then stalled: the receiver has accepted it).
- 410 Gone: the receiver asks us to stop; the endpoint is disabled, on any attempt.
- anything else is a failure: other 4xx and 5xx, 3xx (redirects are never followed, since a
  redirect could point the signed payload at another host), timeouts, refused or reset
  connections, garbage responses. A failure is retried on ``RETRY_SCHEDULE`` with +/-10%
  jitter, so endpoints that failed together do not all come back at the same second; after
  the last scheduled attempt the delivery is dead-lettered.
- 429 and 503 with Retry-After: the next attempt waits for the later of the jittered schedule
  delay and Retry-After capped at ``RETRY_AFTER_CAP``. The schedule stays a floor so that
  ``Retry-After: 0`` cannot make us hammer a struggling receiver; the cap stops one header
  from parking a delivery for months. A throttled attempt still counts toward the schedule,
  so a receiver that always throttles is dead-lettered after the same number of attempts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import Enum

# Delay before attempt 1, 2, ... 8, measured from the previous attempt.
RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(0),
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
MAX_ATTEMPTS = len(RETRY_SCHEDULE)
JITTER = 0.10
RETRY_AFTER_CAP = timedelta(hours=24)
# Longest Retry-After that parse_retry_after reports; larger values are clamped to it.
RETRY_AFTER_LIMIT = timedelta(days=365)

_THROTTLED = frozenset({429, 503})
_GONE = 410
# Jitter spreads load over time; it guards nothing, so a non-cryptographic generator is right.
_JITTER_RNG = random.Random()  # noqa: S311


class Outcome(Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DISABLE_ENDPOINT = "disable_endpoint"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt got back: a status, or an error when no response came."""

    status_code: int | None
    error: str | None
    latency_ms: float
    retry_after: timedelta | None = None


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    next_attempt_at: datetime | None
    reason: str


def decide(
    attempt_number: int, result: Attempt, now: datetime, rng: random.Random | None = None
) -> Decision:
    """Decide what follows attempt ``attempt_number`` (1-based), which ended at ``now``."""
    if attempt_number < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt_number}")
    status = result.status_code
    if status is not None and 200 <= status < 300:
        return Decision(Outcome.DELIVERED, None, f"HTTP {status}")
    if status == _GONE:
        return Decision(Outcome.DISABLE_ENDPOINT, None, "HTTP 410: the receiver is gone")
    reason = _failure_reason(result)
    if attempt_number >= MAX_ATTEMPTS:
        return Decision(Outcome.DEAD_LETTER, None, f"{reason}; all {MAX_ATTEMPTS} attempts failed")
    delay = _jittered(RETRY_SCHEDULE[attempt_number], rng or _JITTER_RNG)
    if status in _THROTTLED and result.retry_after is not None:
        asked = min(result.retry_after, RETRY_AFTER_CAP)
        if asked > delay:
            delay = asked
            reason = f"{reason}; Retry-After {int(asked.total_seconds())} s honoured"
    return Decision(Outcome.RETRY, now + delay, reason)


def parse_retry_after(value: str, now: datetime) -> timedelta | None:
    """Read a Retry-After header: delay-seconds or an HTTP-date; None when it is neither.

    A date in the past means "now" (zero); values beyond ``RETRY_AFTER_LIMIT`` are clamped.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    text = value.strip()
    if text.isascii() and text.isdigit():
        seconds = int(text) if len(text) <= 12 else None
        limit = RETRY_AFTER_LIMIT.total_seconds()
        return timedelta(seconds=limit if seconds is None else min(seconds, limit))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" dates come back naive; HTTP-dates are always GMT
        when = when.replace(tzinfo=UTC)
    return min(max(when - now, timedelta(0)), RETRY_AFTER_LIMIT)


def _jittered(delay: timedelta, rng: random.Random) -> timedelta:
    return delay * (1 + JITTER * (2 * rng.random() - 1))


def _failure_reason(result: Attempt) -> str:
    status = result.status_code
    if status is None:
        return result.error or "no response"
    if 300 <= status < 400:
        return f"HTTP {status}: redirects are not followed"
    return f"HTTP {status}"
