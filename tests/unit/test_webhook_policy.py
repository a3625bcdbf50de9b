"""The webhook retry policy: schedule, jitter, 410, Retry-After, redirects, dead letter."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from careloop.domain.webhook_policy import (
    MAX_ATTEMPTS,
    RETRY_AFTER_CAP,
    RETRY_AFTER_LIMIT,
    RETRY_SCHEDULE,
    Attempt,
    Outcome,
    decide,
    parse_retry_after,
)

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class FixedRandom(random.Random):
    """random() always returns ``value``: 0.5 means no jitter, 0.0 the most negative."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


NO_JITTER = FixedRandom(0.5)


def failed(status: int | None = 500, retry_after: timedelta | None = None) -> Attempt:
    error = None if status is not None else "timeout: timed out"
    return Attempt(status_code=status, error=error, latency_ms=12.5, retry_after=retry_after)


def test_schedule_is_immediate_then_5s_5min_30min_2h_5h_10h_10h() -> None:
    seconds = [delay.total_seconds() for delay in RETRY_SCHEDULE]
    assert seconds == [0, 5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600]
    assert MAX_ATTEMPTS == 8


@pytest.mark.parametrize("attempt_number", range(1, 8))
def test_a_failed_attempt_is_retried_after_the_next_scheduled_delay(attempt_number: int) -> None:
    decision = decide(attempt_number, failed(500), NOW, NO_JITTER)

    assert decision.outcome is Outcome.RETRY
    assert decision.next_attempt_at == NOW + RETRY_SCHEDULE[attempt_number]
    assert decision.reason == "HTTP 500"


def test_the_eighth_failed_attempt_dead_letters_the_delivery() -> None:
    decision = decide(8, failed(500), NOW, NO_JITTER)

    assert decision.outcome is Outcome.DEAD_LETTER
    assert decision.next_attempt_at is None
    assert "8 attempts" in decision.reason


def test_whole_schedule_spans_about_27_and_a_half_hours_before_the_dead_letter() -> None:
    at, outcomes = NOW, []
    for number in range(1, 9):
        decision = decide(number, failed(None), at, NO_JITTER)
        outcomes.append(decision.outcome)
        at = decision.next_attempt_at or at
    assert outcomes == [Outcome.RETRY] * 7 + [Outcome.DEAD_LETTER]
    assert at - NOW == timedelta(hours=27, minutes=35, seconds=5)


@pytest.mark.parametrize(
    ("draw", "factor"), [(0.0, 0.9), (0.5, 1.0), (0.25, 0.95), (0.999999, 1.0999998)]
)
def test_jitter_moves_the_delay_by_at_most_ten_percent(draw: float, factor: float) -> None:
    decision = decide(5, failed(503), NOW, FixedRandom(draw))  # the 5 h step

    assert decision.next_attempt_at is not None
    delay = decision.next_attempt_at - NOW
    assert delay.total_seconds() == pytest.approx(5 * 3600 * factor, abs=0.001)


def test_jitter_stays_in_bounds_and_repeats_for_the_same_seed() -> None:
    first = [decide(4, failed(), NOW, random.Random(7)).next_attempt_at for _ in range(3)]
    second = [decide(4, failed(), NOW, random.Random(7)).next_attempt_at for _ in range(3)]
    assert first == second

    rng = random.Random(42)
    delays = []
    for _ in range(2000):
        decision = decide(4, failed(), NOW, rng)
        assert decision.next_attempt_at is not None
        delays.append((decision.next_attempt_at - NOW) / timedelta(hours=2))
    assert min(delays) >= 0.9
    assert max(delays) < 1.1
    assert max(delays) - min(delays) > 0.15  # it does spread


def test_jitter_without_a_generator_still_stays_in_bounds() -> None:
    decision = decide(3, failed(), NOW)

    assert decision.next_attempt_at is not None
    delay = decision.next_attempt_at - NOW
    assert timedelta(minutes=27) <= delay <= timedelta(minutes=33)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_any_2xx_is_delivered(status: int) -> None:
    decision = decide(1, Attempt(status, None, 3.0), NOW, NO_JITTER)

    assert decision.outcome is Outcome.DELIVERED
    assert decision.next_attempt_at is None


def test_a_2xx_whose_body_then_stalled_is_still_delivered() -> None:
    attempt = Attempt(200, "response body: timeout: timed out", 10_000.0)

    assert decide(1, attempt, NOW, NO_JITTER).outcome is Outcome.DELIVERED


@pytest.mark.parametrize("attempt_number", [1, 4, 8])
def test_410_gone_disables_the_endpoint_on_any_attempt(attempt_number: int) -> None:
    decision = decide(attempt_number, failed(410), NOW, NO_JITTER)

    assert decision.outcome is Outcome.DISABLE_ENDPOINT
    assert decision.next_attempt_at is None


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_longer_than_the_schedule_is_honoured(status: int) -> None:
    decision = decide(2, failed(status, timedelta(hours=1)), NOW, NO_JITTER)

    assert decision.outcome is Outcome.RETRY
    assert decision.next_attempt_at == NOW + timedelta(hours=1)
    assert "Retry-After 3600 s" in decision.reason


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_shorter_than_the_schedule_never_brings_the_retry_forward(status: int) -> None:
    decision = decide(2, failed(status, timedelta(seconds=1)), NOW, NO_JITTER)

    assert decision.next_attempt_at == NOW + timedelta(minutes=5)


def test_retry_after_is_capped_at_24_hours() -> None:
    decision = decide(1, failed(429, timedelta(days=30)), NOW, NO_JITTER)

    assert decision.next_attempt_at == NOW + RETRY_AFTER_CAP == NOW + timedelta(hours=24)


@pytest.mark.parametrize("status", [500, 502, 400, 404])
def test_retry_after_on_other_statuses_is_ignored(status: int) -> None:
    decision = decide(1, failed(status, timedelta(hours=3)), NOW, NO_JITTER)

    assert decision.next_attempt_at == NOW + timedelta(seconds=5)


def test_429_without_retry_after_follows_the_schedule() -> None:
    decision = decide(3, failed(429), NOW, NO_JITTER)

    assert decision.next_attempt_at == NOW + timedelta(minutes=30)


def test_throttled_attempts_still_count_toward_the_dead_letter() -> None:
    decision = decide(8, failed(429, timedelta(seconds=30)), NOW, NO_JITTER)

    assert decision.outcome is Outcome.DEAD_LETTER


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_a_failure_not_a_delivery(status: int) -> None:
    decision = decide(1, failed(status), NOW, NO_JITTER)

    assert decision.outcome is Outcome.RETRY
    assert decision.next_attempt_at == NOW + timedelta(seconds=5)
    assert "redirects are not followed" in decision.reason


def test_a_network_failure_is_retried_and_its_error_is_the_reason() -> None:
    decision = decide(1, failed(None), NOW, NO_JITTER)

    assert decision.outcome is Outcome.RETRY
    assert decision.reason == "timeout: timed out"


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        decide(0, failed(), NOW, NO_JITTER)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", timedelta(seconds=120)),
        (" 0 ", timedelta(0)),
        ("Mon, 02 Mar 2026 09:05:00 GMT", timedelta(minutes=5)),  # IMF-fixdate
        ("Monday, 02-Mar-26 10:00:00 GMT", timedelta(hours=1)),  # obsolete RFC 850
        ("Mon Mar  2 09:00:30 2026", timedelta(seconds=30)),  # obsolete asctime
        ("Mon, 02 Mar 2026 08:00:00 GMT", timedelta(0)),  # in the past: now
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(header: str, expected: timedelta) -> None:
    assert parse_retry_after(header, NOW) == expected


@pytest.mark.parametrize(
    "header", ["", "soon", "-5", "1.5", "\uff11\uff12", "Mon, 99 Foo 2026 25:00:00 GMT", "12s"]
)
def test_garbage_retry_after_is_none(header: str) -> None:
    assert parse_retry_after(header, NOW) is None


def test_absurd_retry_after_is_clamped_not_an_overflow() -> None:
    assert parse_retry_after("9" * 40, NOW) == RETRY_AFTER_LIMIT
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", NOW) == RETRY_AFTER_LIMIT


def test_retry_after_needs_an_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_retry_after("10", datetime(2026, 3, 2, 9, 0))
