"""Group commit for referral intake: concurrent POSTs share one transaction.

On SQLite every write transaction takes the database's one writer lock and ends with a
flush to disk. Under concurrent intake the requests queue for that lock one by one, and
each holder is slowed further by the other requests' Python running under the same GIL.
Here the event loop gathers the creates that arrive while a batch is being written and
sends them to the next batch (services.cases.create_referrals): one lock, one commit, one
flush for all of them. A request that arrives while a writer is free goes at once,
alone, so a single client waits for nobody. With PostgreSQL, which runs transactions in
parallel, several writers run at once (``writers``), so one slow transaction does not
hold up every create in the process.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque

from careloop.api.blocking import BlockingPool
from careloop.domain.case import Case
from careloop.services.cases import IntakeRequest, IntakeResult, create_referrals
from careloop.services.deps import Deps

Waiting = tuple[IntakeRequest, "asyncio.Future[IntakeResult]"]


class IntakeBatcher:
    def __init__(
        self, deps: Deps, blocking: BlockingPool, max_batch: int = 32, writers: int = 1
    ) -> None:
        self._deps = deps
        self._blocking = blocking
        self._max_batch = max_batch
        self._max_writers = writers
        # Only the event loop's thread touches these: no lock needed.
        self._waiting: deque[Waiting] = deque()
        self._writers: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    async def create(self, request: IntakeRequest) -> tuple[Case, bool]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[IntakeResult] = loop.create_future()
        self._waiting.append((request, future))
        if len(self._writers) < self._max_writers:
            writer = loop.create_task(self._write_batches())
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        result = await future
        if isinstance(result, Exception):
            raise result
        return result

    async def _write_batches(self) -> None:
        batch: list[Waiting] = []
        try:
            while self._waiting:
                batch = self._next_batch()
                if not batch:
                    continue
                try:
                    results = await self._blocking.run(
                        create_referrals, self._deps, [request for request, _ in batch]
                    )
                except Exception as error:  # the commit failed: every request gets why
                    results = [_own_copy(error) for _ in batch]
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():  # its client may have gone away meanwhile
                        future.set_result(result)
                batch = []
        finally:
            # Leave the set now, not in the done callback a loop turn later: a create
            # arriving in between must see a free writer and start one.
            task = asyncio.current_task()
            if task is not None:
                self._writers.discard(task)
            # Cancelled while writing (the server shutting down): nobody is left waiting.
            for _, future in batch:
                if not future.done():
                    future.set_exception(
                        RuntimeError("intake stopped before the referral was saved")
                    )

    def _next_batch(self) -> list[Waiting]:
        """Up to max_batch waiting creates, leaving out those whose client has gone away
        (their request was cancelled before a batch took it): they are not written."""
        batch: list[Waiting] = []
        while self._waiting and len(batch) < self._max_batch:
            entry = self._waiting.popleft()
            if not entry[1].done():
                batch.append(entry)
        return batch


def _own_copy(error: Exception) -> Exception:
    # One exception object raised in several requests would mix their tracebacks.
    try:
        return copy.copy(error)
    except Exception:  # an exception that cannot be copied is shared as it is
        return error
