"""What the gateway processes sharing one database need of each other, and nothing else.

Persistence has the ``Store``; this is its companion for coordination. One gateway process on a
SQLite file is alone: :class:`LocalCoordination` delivers in memory and every lease is its own.
Several replicas on one PostgreSQL server reach each other through it (``_pg_coordination.py``:
LISTEN/NOTIFY, lease rows, advisory locks). Nothing in the gateway talks to another replica
except through this protocol, so what crosses replicas is all listed by its topics
(``gateway/cluster.py``).

Delivery: a message published on a topic reaches every subscriber of that topic in every
process, the publisher's own included (handlers never need a second, local path), at most once,
in the order one process published them. It is not durable: a process that is not listening
when it is published never sees it. Payloads are JSON objects; large ones are fine (the
PostgreSQL side moves those over 7,000 bytes through a table).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import anyio

__all__ = ["Coordination", "Handler", "LocalCoordination", "Unsubscribe", "new_instance_id"]

logger = logging.getLogger(__name__)

Handler = Callable[[Mapping[str, Any]], Awaitable[None]]
Unsubscribe = Callable[[], None]


def new_instance_id() -> str:
    """A replica's id for the life of its process: short (it goes into ids the gateway mints)."""
    return secrets.token_hex(4)


class Coordination(Protocol):
    """Publish/subscribe, leases and exclusive sections across the processes on one database.

    Handlers run in the subscriber's process one at a time per topic, in publishing order; one
    that raises is logged and the next message is still delivered. Every method may raise
    :class:`store.StoreError` when the database cannot be reached (``publish``: the message is
    lost; ``hold_lease``: the lease is not held).
    """

    @property
    def instance_id(self) -> str:
        """This process's id, unique among the processes on the database."""
        ...

    @property
    def shared(self) -> bool:
        """True when other processes may serve the same sessions (a PostgreSQL store)."""
        ...

    async def publish(self, topic: str, payload: Mapping[str, Any]) -> None:
        """Deliver ``payload`` to every subscriber of ``topic`` in every process."""
        ...

    def subscribe(self, topic: str, handler: Handler) -> Unsubscribe:
        """Call ``handler`` with each payload published on ``topic`` from now on."""
        ...

    async def hold_lease(self, name: str, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl_s`` seconds: True when this process holds it
        (nobody held it, its holder let it lapse, or this process held it already)."""
        ...

    def exclusive(self, name: str) -> AbstractAsyncContextManager[None]:
        """Inside, no other process (nor task of this one) is inside ``exclusive(name)``."""
        ...

    async def live_instances(self) -> frozenset[str]:
        """The processes whose heartbeat has not lapsed, this one included."""
        ...


class LocalCoordination:
    """One process alone on its database: messages are delivered in memory, leases are held."""

    def __init__(self, instance_id: str | None = None) -> None:
        self._id = instance_id or new_instance_id()
        self._handlers: dict[str, list[Handler]] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._leases: dict[str, float] = {}

    @property
    def instance_id(self) -> str:
        return self._id

    @property
    def shared(self) -> bool:
        return False

    async def publish(self, topic: str, payload: Mapping[str, Any]) -> None:
        for handler in list(self._handlers.get(topic, ())):
            try:
                await handler(payload)
            except Exception as exc:  # one bad handler must not cost the others their message
                logger.error("coordination: a handler of %s failed: %s: %s", topic, type(exc).__name__, exc)

    def subscribe(self, topic: str, handler: Handler) -> Unsubscribe:
        handlers = self._handlers.setdefault(topic, [])
        handlers.append(handler)

        def unsubscribe() -> None:
            if handler in handlers:
                handlers.remove(handler)

        return unsubscribe

    async def hold_lease(self, name: str, ttl_s: float) -> bool:
        self._leases[name] = time.monotonic() + ttl_s
        return True

    @asynccontextmanager
    async def _exclusive(self, name: str) -> AsyncIterator[None]:
        async with self._locks.setdefault(name, anyio.Lock()):
            yield

    def exclusive(self, name: str) -> AbstractAsyncContextManager[None]:
        return self._exclusive(name)

    async def live_instances(self) -> frozenset[str]:
        return frozenset({self._id})
