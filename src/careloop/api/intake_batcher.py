"""Group commit for referral intake: concurrent POSTs share one transaction.

On SQLite every write transaction takes the database's one writer lock and ends with a
flush to disk. Under concurrent intake the requests queue for that lock one by one, and
each holder is slowed further by the other requests' Python running under the same GIL.
Here the event loop gathers the creates that arrive while a batch is being written and
sends them to the next batch (services.cases.create_referrals): one lock, one commit, one
flush for all of them. A request that arrives while nothing is being written goes at
once, alone, so a single client waits for nobody.
"""

from __future__ import annotations

import asyncio

from careloop.api.blocking import BlockingPool
from careloop.domain.case import Case
from careloop.services.cases import IntakeRequest, IntakeResult, create_referrals
from careloop.services.deps import Deps


class IntakeBatcher:
    def __init__(self, deps: Deps, blocking: BlockingPool, max_batch: int = 32) -> None:
        self._deps = deps
        self._blocking = blocking
        self._max_batch = max_batch
        # Only the event loop's thread touches these: no lock needed.
        self._waiting: list[tuple[IntakeRequest, asyncio.Future[IntakeResult]]] = []
        self._writing = False
        self._writer: asyncio.Task[None] | None = None  # the loop keeps only weak references

    async def create(self, request: IntakeRequest) -> tuple[Case, bool]:
        future: asyncio.Future[IntakeResult] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if not self._writing:
            self._writing = True
            self._writer = asyncio.get_running_loop().create_task(self._write_batches())
        result = await future
        if isinstance(result, Exception):
            raise result
        return result

    async def _write_batches(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                try:
                    results = await self._blocking.run(
                        create_referrals, self._deps, [request for request, _ in batch]
                    )
                except Exception as error:  # the commit failed: every request gets why
                    results = [error] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():  # its client may have gone away meanwhile
                        future.set_result(result)
        finally:
            self._writing = False
