"""The thread pool where async routes run blocking work (a use case's transaction).

asyncio's own executor hand-off costs the server about half the CPU of Starlette's
run_in_threadpool (anyio), which on the intake path was a tenth of a request's cost.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class BlockingPool:
    def __init__(self, threads: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="careloop-api")

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on a pool thread, with the caller's context variables."""
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, context.run, function, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
