"""Foreground first: background work gives way while the API is serving requests.

`careloop serve` runs the automation worker in the API's own interpreter. Under one GIL
every millisecond the relay spends is a millisecond a request waits, so during a burst
each worker loop holds back, for at most a bounded time per step, and catches up once
the burst is over. Automation slows down under load but never stops (Worker.give_way);
what it owes meanwhile is the backlog, which a long burst makes longer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Foreground:
    """Counts requests in flight and remembers when the last one ended."""

    def __init__(
        self, quiet_seconds: float = 0.05, clock: Callable[[], float] = time.monotonic
    ) -> None:
        # A lull this short between requests of a burst still counts as busy, so the
        # worker does not start a batch in every gap between two requests.
        self._quiet = quiet_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._last_end = float("-inf")

    def enter(self) -> None:
        with self._lock:
            self._in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._last_end = self._clock()

    def busy(self) -> bool:
        return self._in_flight > 0 or self._clock() - self._last_end < self._quiet
