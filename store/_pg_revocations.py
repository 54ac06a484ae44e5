"""How every process on one PostgreSQL database learns at once that a key or a grant was revoked.

The SQLite store's answer is a marker file beside the database (``_revocations.py``); a server
database has no "beside", and the processes may be on other machines. Here each revocation runs
``NOTIFY mcpgw_revoked`` in its own transaction, so the notice goes out when (and only if) it
commits, and each store keeps a connection of its own that ``LISTEN``\\ s: every notice advances
a counter in memory, which is the store's key generation (``Store.key_generation``), read per
request for nothing. The process that revokes advances its own counter as soon as it commits.

When the listening connection is lost, nobody would hear a revocation: the generation advances
at once (no cached key outlives what the store can vouch for), and until the connection is
back (retried with backoff) the revocations in the tables are polled every ``POLL_S``: any
change advances the generation again. On reconnecting it advances once more, for what was
missed in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import asyncpg

from ._pg import listening

__all__ = ["CHANNEL", "POLL_S", "RevocationListener"]

logger = logging.getLogger(__name__)

CHANNEL = "mcpgw_revoked"
POLL_S = 1.0
"""How often revocations are polled while the listening connection is down."""
_RECONNECT_MAX_S = 5.0
# Revoked keys are never deleted, and a grant's revocation sets its revoked_at; pruning only
# takes rows away (which changes the answer too: a needless look-up, never a missed revocation).
_POLL = (
    "SELECT (SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL),"
    " (SELECT count(*) FROM signin_grants WHERE revoked_at IS NOT NULL),"
    " (SELECT max(revoked_at) FROM signin_grants)"
)

Connect = Callable[[], Awaitable[asyncpg.Connection]]


class RevocationListener:
    def __init__(self, connect: Connect, poll: Callable[[str], Awaitable[Any]]) -> None:
        self._connect = connect
        self._poll = poll  # runs a query on the store's pool, returns its first row
        self._generation = 0
        self._conn: asyncpg.Connection | None = None
        self._lost = anyio.Event()
        self._task: asyncio.Task[None] | None = None
        self.listening = False

    def generation(self) -> int:
        return self._generation

    def advance(self) -> None:
        self._generation += 1

    def _heard(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        self._generation += 1

    def _terminated(self, conn: Any) -> None:
        self._lost.set()

    async def start(self) -> None:
        """Listen (raises if the first connection fails: the caller reports that) and keep
        listening, in a task of its own until :meth:`aclose` (an asyncio task, not a task group's:
        the store is opened and closed by whoever holds it, maybe from two tasks)."""
        await self._listen()
        self._task = asyncio.get_running_loop().create_task(self._keep_listening())

    async def _listen(self) -> None:
        self._lost = anyio.Event()
        self._conn = await listening(self._connect, CHANNEL, self._heard, self._terminated)
        self.listening = True

    async def _keep_listening(self) -> None:
        while True:
            await self._lost.wait()
            self.listening = False
            self._generation += 1
            logger.warning("revocations: the listening connection to the database was lost; polling")
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None
            await self._until_listening()
            self._generation += 1
            logger.info("revocations: listening again")

    async def _until_listening(self) -> None:
        delay = POLL_S
        seen: Any = None
        next_attempt = 0.0
        while True:
            try:
                row = await self._poll(_POLL)
                state = None if row is None else tuple(row)
                if seen is not None and state != seen:
                    self._generation += 1
                seen = state
            except Exception:  # the database is away: nothing to compare; keep trying
                self._generation += 1
            if anyio.current_time() >= next_attempt:
                try:
                    await self._listen()
                    return
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                    next_attempt = anyio.current_time() + delay
                    delay = min(delay * 2, _RECONNECT_MAX_S)
            await anyio.sleep(POLL_S)  # a schedule: the bounded poll, not synchronisation

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await conn.close(timeout=2)
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                    conn.terminate()
