"""The writer connection: blocking sqlite3 functions run on it one at a time, in order.

``call`` runs a function in a thread of its own. ``write`` runs it right here, on the event
loop's thread, when nothing is queued for that thread and no other connection holds the lock:
a small commit (WAL with ``synchronous = NORMAL``, so no fsync) takes about 50 µs, and the hop to
a thread and back cost more than that again (queue, wake-up, the loop's self-pipe: ~70 µs of
CPU per call, measured). Nothing that can wait runs here: the lock is tried once (busy timeout
0; busy means the write goes to the thread, which waits for it), and checkpoints, which fsync,
run only in the thread: the connection's automatic checkpoint is off and the thread runs one
every ``CHECKPOINT_EVERY`` writes.

Why not aiosqlite or ``anyio.to_thread`` for the thread: aiosqlite makes one round trip per
statement, and ``anyio.to_thread.run_sync`` costs about 100 µs of CPU per call. A plain queue and
``call_soon_threadsafe`` cost under half that. One connection, used by one caller at a time,
also means no transaction can interleave with another, with no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from ._connection import BUSY_TIMEOUT_MS
from ._sqlite_errors import is_busy

__all__ = ["CHECKPOINT_EVERY", "WriterThread"]

logger = logging.getLogger(__name__)

CHECKPOINT_EVERY = 200
"""Writes between two checkpoints: a one-call commit adds about 6 pages to the WAL, so a little
over the 1000 pages at which SQLite's automatic checkpoint would run (5 MB)."""

T = TypeVar("T")
_Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]", asyncio.AbstractEventLoop]
_NO_WAIT = "PRAGMA busy_timeout = 0"
_WAIT = f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}"


def _checkpoint(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except sqlite3.Error as exc:  # the next one will do; a write must never fail over this
        logger.info("WAL checkpoint skipped: %s", exc)


class WriterThread:
    def __init__(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._conn = conn
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._in_thread = 0  # jobs queued or running there; counted on the loop's thread only
        self._writes = 0
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
                    loop.call_soon_threadsafe(self._settle, future, result, error)
        finally:
            self._conn.close()

    def _settle(self, future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
        self._in_thread -= 1
        if future.done():  # the awaiting task was cancelled; the work itself still finished
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def _submit(self, work: Callable[..., T], args: tuple[Any, ...]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._in_thread += 1
        self._jobs.put((work, args, future, loop))
        return future

    async def call(self, work: Callable[..., T], *args: Any) -> T:
        """Run ``work(connection, *args)`` in the thread, after every call queued before it.

        Cancelling the caller does not stop the work: a transaction in flight always finishes
        or rolls back inside ``work``.
        """
        return await self._submit(work, args)

    async def write(self, work: Callable[..., T], *args: Any, here: bool = True) -> T:
        """Run the write ``work(connection, *args)`` here if ``here`` and that cannot block, else
        in the thread (pass ``here=False`` for work too big to hold the event loop up for).

        ``work`` must leave nothing behind when it fails (roll back its transaction): after a
        busy error here, it runs again in the thread.
        """
        result: T
        if here and self._in_thread == 0:
            try:
                result = self._without_waiting(work, args)
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
                result = await self.call(work, *args)
        else:
            result = await self.call(work, *args)
        self._writes += 1
        if self._writes >= CHECKPOINT_EVERY:
            self._writes = 0
            self._submit(_checkpoint, ())  # nobody waits for it; later writes queue behind it
        return result

    def _without_waiting(self, work: Callable[..., T], args: tuple[Any, ...]) -> T:
        self._conn.execute(_NO_WAIT)
        try:
            return work(self._conn, *args)
        finally:
            self._conn.execute(_WAIT)

    async def aclose(self) -> None:
        """Finish the queued calls, close the connection and end the thread."""
        self._jobs.put(None)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._thread.join)
