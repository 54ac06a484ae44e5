"""A thread that owns the writer connection and runs blocking sqlite3 functions on it, in order.

Why not aiosqlite or ``anyio.to_thread`` here: the recorder commits a batch per call under
light load, and a batch is one function call (``BEGIN`` … ``COMMIT``). aiosqlite would make one
thread round trip per statement; ``anyio.to_thread.run_sync`` makes one, but at about 100 µs
of CPU, more than the commit itself (60-80 µs). A plain queue and ``call_soon_threadsafe`` cost
under half that. One thread also means one function at a time: no transaction can interleave
with another, with no lock. asyncio only, like the rest of the running gateway (uvicorn).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

__all__ = ["WriterThread"]

T = TypeVar("T")
_Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the awaiting task was cancelled; the work itself still finished
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class WriterThread:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="mcpgw-sqlite-writer", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                work, args, future, loop = job
                try:
                    result, error = work(self._conn, *args), None
                except BaseException as exc:  # handed to the caller, raised there
                    result, error = None, exc
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                    loop.call_soon_threadsafe(_settle, future, result, error)
        finally:
            self._conn.close()

    async def call(self, work: Callable[..., T], *args: Any) -> T:
        """Run ``work(connection, *args)`` in the thread, after every call queued before it.

        Cancelling the caller does not stop the work: a transaction in flight always finishes
        or rolls back inside ``work``.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((work, args, future, loop))
        return await future

    async def aclose(self) -> None:
        """Finish the queued calls, close the connection and end the thread."""
        self._jobs.put(None)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._thread.join)
