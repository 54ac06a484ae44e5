"""Coordination between the gateway processes on one PostgreSQL database (store/coordination.py).

- **Messages** go out as ``NOTIFY mcpgw_cluster`` (``pg_notify`` on the pool: sent when the
  statement commits) with ``{"o": origin, "t": topic, "p": payload}``; a payload whose text
  is over ``INLINE_BYTES`` (NOTIFY refuses more than 8,000 bytes) is written to
  ``cluster_messages`` and the notice carries its row id instead (``"r"``), read by each
  receiver and pruned after ``KEEP_MESSAGES_S``. Each process LISTENs on a connection of its
  own and hands what it hears to one task, which runs the handlers in order; its own messages
  are delivered in memory when published and skipped when heard back. Publishes awaited one
  after another from one process commit, and are heard, in that order.
- **Leases** are rows of ``cluster_leases``: taken by an upsert that succeeds only when the row
  is this process's or has lapsed, timed by the server's clock (one clock for every replica).
- **Exclusive sections** take a transaction-scoped advisory lock on a pooled connection (ended
  by commit, or by the server if the connection is lost: never left behind); tasks of one
  process queue on a lock of their own first, so they hold one connection between them.
- **Instances** beat every ``HEARTBEAT_S`` into ``cluster_instances``; one is live while its
  beat is younger than ``LIVE_S``. A process that stops deletes its row.

While the listening connection is lost, messages published by others are missed (delivery is
at most once, as documented in the protocol); it is re-opened with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import asyncpg
import orjson

from ._pg import PgDatabase, listening
from .coordination import Handler, LocalCoordination, Unsubscribe, new_instance_id
from .errors import StoreError

__all__ = ["CHANNEL", "HEARTBEAT_S", "INLINE_BYTES", "LIVE_S", "PgCoordination"]

logger = logging.getLogger(__name__)

CHANNEL = "mcpgw_cluster"
INLINE_BYTES = 7000
KEEP_MESSAGES_S = 60
HEARTBEAT_S = 2.0
LIVE_S = 3 * HEARTBEAT_S
_RECONNECT_MAX_S = 5.0

_TAKE_LEASE = """
INSERT INTO cluster_leases (name, holder, expires_at)
VALUES (?, ?, now() + make_interval(secs => ?))
ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
WHERE cluster_leases.holder = EXCLUDED.holder OR cluster_leases.expires_at < now()
RETURNING holder
"""
_BEAT = """
INSERT INTO cluster_instances (id, started_at, seen_at) VALUES (?, now(), now())
ON CONFLICT (id) DO UPDATE SET seen_at = now()
"""
_LIVE = "SELECT id FROM cluster_instances WHERE seen_at > now() - make_interval(secs => ?)"
# Rows of processes long gone, and large payloads every receiver has had time to read.
_PRUNE = (
    "DELETE FROM cluster_instances WHERE seen_at < now() - interval '1 hour'",
    f"DELETE FROM cluster_messages WHERE created_at < now() - interval '{KEEP_MESSAGES_S} seconds'",
)

_MISSED = "messages from other replicas are missed until it is back"
_READ = "SELECT payload FROM cluster_messages WHERE id = ?"

Connect = Callable[[], Awaitable[asyncpg.Connection]]


class PgCoordination:
    def __init__(self, database: PgDatabase, connect: Connect, instance_id: str | None = None) -> None:
        self._db = database
        self._connect = connect
        self._local = LocalCoordination(instance_id or new_instance_id())
        self._heard: asyncio.Queue[str] = asyncio.Queue()
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._locks: dict[str, anyio.Lock] = {}
        self.listening = False

    # --- the protocol -------------------------------------------------------------------------

    @property
    def instance_id(self) -> str:
        return self._local.instance_id

    @property
    def shared(self) -> bool:
        return True

    async def publish(self, topic: str, payload: Mapping[str, Any]) -> None:
        await self._local.publish(topic, payload)
        body = orjson.dumps(payload)
        if len(body) + len(topic) + 32 <= INLINE_BYTES:
            notice = orjson.dumps({"o": self.instance_id, "t": topic, "p": orjson.Fragment(body)})
            await self._db.run("publish", "SELECT pg_notify(?, ?)", (CHANNEL, notice.decode()))
            return
        row = await self._db.one(
            "publish", "INSERT INTO cluster_messages (payload) VALUES (?) RETURNING id", (body.decode(),)
        )
        notice = orjson.dumps({"o": self.instance_id, "t": topic, "r": row[0]})
        await self._db.run("publish", "SELECT pg_notify(?, ?)", (CHANNEL, notice.decode()))

    def subscribe(self, topic: str, handler: Handler) -> Unsubscribe:
        return self._local.subscribe(topic, handler)

    async def hold_lease(self, name: str, ttl_s: float) -> bool:
        row = await self._db.one("take a lease", _TAKE_LEASE, (name, self.instance_id, float(ttl_s)))
        return row is not None

    def exclusive(self, name: str) -> AbstractAsyncContextManager[None]:
        return self._exclusive(name)

    @asynccontextmanager
    async def _exclusive(self, name: str) -> AsyncIterator[None]:
        async with self._locks.setdefault(name, anyio.Lock()):
            with self._db.guarded("take an exclusive lock"):
                conn = await self._db.pool.acquire()
            try:
                with self._db.guarded("take an exclusive lock"):
                    transaction = conn.transaction()
                    await transaction.start()
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", name)
                try:
                    yield
                finally:
                    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                        await transaction.rollback()  # nothing was written: ending it frees the lock
            finally:
                with anyio.CancelScope(shield=True):
                    await self._db.pool.release(conn)

    async def live_instances(self) -> frozenset[str]:
        rows = await self._db.all("list live instances", _LIVE, (LIVE_S,))
        return frozenset(str(row[0]) for row in rows) | {self.instance_id}

    # --- running ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen and beat (raises if the first listening connection fails: the caller says so),
        then keep both going in tasks of their own until :meth:`aclose`."""
        await self._listen()
        await self._db.run("beat", _BEAT, (self.instance_id,))
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._deliver()),
            loop.create_task(self._keep_listening()),
            loop.create_task(self._keep_beating()),
        ]

    async def aclose(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(StoreError):
                await self._db.run("leave", "DELETE FROM cluster_instances WHERE id = ?", (self.instance_id,))
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    await conn.close(timeout=2)
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                    conn.terminate()

    def _heard_notice(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        self._heard.put_nowait(str(payload))

    def _terminated(self, conn: Any) -> None:
        self._lost.set()

    async def _listen(self) -> None:
        self._lost = asyncio.Event()
        self._conn = await listening(self._connect, CHANNEL, self._heard_notice, self._terminated)
        self.listening = True

    async def _keep_listening(self) -> None:
        while True:
            await self._lost.wait()
            self.listening = False
            logger.warning("coordination: the listening connection was lost; %s", _MISSED)
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None
            delay = 0.1
            while True:
                try:
                    await self._listen()
                    break
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                    await anyio.sleep(delay)  # a backoff schedule, not synchronisation
                    delay = min(delay * 2, _RECONNECT_MAX_S)
            logger.info("coordination: listening again")

    async def _keep_beating(self) -> None:
        beats = 0
        while True:
            await anyio.sleep(HEARTBEAT_S)  # a schedule, not synchronisation
            try:
                await self._db.run("beat", _BEAT, (self.instance_id,))
                beats += 1
                if beats % 15 == 0:
                    for statement in _PRUNE:
                        await self._db.run("prune coordination", statement)
            except StoreError as exc:
                logger.warning("coordination: heartbeat failed: %s", exc)

    async def _deliver(self) -> None:
        while True:
            notice = await self._heard.get()
            try:
                message = orjson.loads(notice)
                if message.get("o") == self.instance_id:
                    continue  # delivered in memory when it was published
                payload = message.get("p")
                if "r" in message:
                    row = await self._db.one(
                        "read a published message",
                        "SELECT payload FROM cluster_messages WHERE id = ?",
                        (message["r"],),
                    )
                    if row is None:
                        logger.warning(
                            "coordination: a message on %s was pruned before it was read", message.get("t")
                        )
                        continue
                    payload = orjson.loads(row[0])
                if not isinstance(payload, dict) or not isinstance(message.get("t"), str):
                    continue
            except (orjson.JSONDecodeError, StoreError, AttributeError) as exc:
                logger.warning("coordination: a message could not be read: %s", exc)
                continue
            await self._local.publish(message["t"], payload)
