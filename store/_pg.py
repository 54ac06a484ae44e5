"""The PostgreSQL backend's connection pool, its error boundary, and SQL written once for both backends.

Driver: asyncpg (measured against psycopg 3 with psycopg_pool, ``bench/pg_drivers.py``: less
client CPU per group commit and per listing page). Its pool is bounded (``max_size``) and runs
no reset query when a connection goes back (asyncpg's default costs a round trip per use): the
store never leaves session state on a pooled connection (no ``LISTEN``, no session locks, no open
transaction; the listener has a connection of its own).

asyncpg's errors never leave the package: :func:`translated` turns them into ``StoreError``, and
``StoreUnavailable`` for whatever says the server cannot be used right now (refused or lost
connections, a server shutting down or starting up, no free connection slots, a full disk).
Messages are PostgreSQL's primary message only: its ``DETAIL`` can quote a row's values.

:class:`PgDatabase` runs SQL in the dialect both backends accept, written with SQLite's ``?`` and
``:name`` markers (the credential tables' code is shared that way, ``_credentials.py``): it
numbers them as PostgreSQL's ``$1``… once per statement text.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import asyncpg

from .errors import StoreError, StoreUnavailable, StoreUnreachable

__all__ = [
    "Availability",
    "PgDatabase",
    "listening",
    "no_reset",
    "numbered",
    "rowcount",
    "translate",
    "translated",
]

# SQLSTATE classes that mean "not now", not "bad request": 08 connection exception, 53
# insufficient resources, 57 operator intervention (shutdown, cannot connect now), 58 system
# error (I/O); and the serialization failures and deadlocks that retrying resolves (40001, 40P01).
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")
_UNREACHABLE_CLASSES = ("08", "57")  # the connection, or the server, is gone
_UNAVAILABLE_STATES = frozenset({"40001", "40P01", "55P03"})


def translate(exc: BaseException, action: str) -> StoreError:
    """The StoreError for a driver or socket error raised while doing ``action``."""
    if isinstance(exc, asyncpg.PostgresError):
        state = str(exc.sqlstate or "")
        message = f"{action}: {exc.args[0] if exc.args else type(exc).__name__}"
        if state[:2] in _UNREACHABLE_CLASSES:
            return StoreUnreachable(message)
        if state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE_STATES:
            return StoreUnavailable(message)
        return StoreError(message)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return StoreUnreachable(f"{action}: the database did not answer in time")
    if isinstance(exc, OSError):
        return StoreUnreachable(f"{action}: cannot reach the database: {exc.strerror or exc}")
    # InterfaceError (a connection lost or closed under us, the pool closing), ssl errors.
    return StoreUnreachable(f"{action}: the database connection failed: {exc}")


_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError, ssl.SSLError)


@contextmanager
def translated(action: str) -> Iterator[None]:
    """Translate the driver's (and the socket's) errors raised in the block into StoreErrors."""
    try:
        yield
    except _DRIVER_ERRORS as exc:
        raise translate(exc, action) from exc


async def listening(
    connect: Callable[[], Awaitable[asyncpg.Connection]],
    channel: str,
    heard: Callable[[Any, int, str, object], None],
    lost: Callable[[Any], None],
) -> asyncpg.Connection:
    """A new connection LISTENing on ``channel`` (``heard`` per notice, ``lost`` when the
    connection ends); closed again if setting it up fails."""
    conn = await connect()
    try:
        conn.add_termination_listener(lost)
        await conn.add_listener(channel, heard)
    except BaseException:
        conn.terminate()
        raise
    return conn


async def no_reset(conn: asyncpg.Connection) -> None:
    """The pool's reset: nothing to undo (see the module's docstring)."""


_MARK = re.compile(r"'[^']*'|\?|(?<!:):([a-z_][a-z0-9_]*)")


@lru_cache(maxsize=512)
def numbered(sql: str) -> tuple[str, tuple[str, ...] | None]:
    """``sql`` with ``?`` (or ``:name``) markers as ``$n``; the names in order of their numbers
    (``None`` for ``?`` markers). A quoted literal is left as it is; ``::type`` casts too."""
    names: list[str] = []
    count = 0

    def mark(match: re.Match[str]) -> str:
        nonlocal count
        text = match.group(0)
        if text.startswith("'"):
            return text
        if text == "?":
            count += 1
            return f"${count}"
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    converted = _MARK.sub(mark, sql)
    if names and count:
        raise ValueError("a statement mixes ? and :name markers")
    return converted, (tuple(names) if names else None)


def _arguments(names: tuple[str, ...] | None, parameters: Sequence[Any] | Mapping[str, Any]) -> list[Any]:
    if names is None:
        return list(parameters)
    assert isinstance(parameters, Mapping)
    return [parameters[name] for name in names]


def rowcount(status: str) -> int:
    """The rows a command's status (``UPDATE 3``, ``INSERT 0 1``, ``DELETE 0``) says it touched."""
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


class Availability:
    """Whether the server is worth asking: after a failure to reach it, every use fails at once
    (``StoreUnavailable``) until a retry is due, backing off from 50 ms to 2 s, so an outage is
    told to callers without each of them waiting on a connection attempt; the first use after
    the backoff tries again, and one success ends the outage."""

    _FIRST_S = 0.05
    _MAX_S = 2.0

    def __init__(self) -> None:
        self._retry_at = 0.0
        self._backoff = 0.0
        self.problem: str | None = None  # what the last failure said, while it holds

    def check(self, action: str) -> None:
        if self.problem is not None and time.monotonic() < self._retry_at:
            raise StoreUnreachable(f"{action}: {self.problem}")

    def failed(self, error: StoreUnreachable) -> None:
        self._backoff = min(self._MAX_S, max(self._FIRST_S, self._backoff * 2))
        self._retry_at = time.monotonic() + self._backoff
        self.problem = str(error).partition(": ")[2] or str(error)

    def succeeded(self) -> None:
        if self.problem is not None:
            self.problem, self._backoff = None, 0.0


class PgDatabase:
    """The pool, behind :class:`Availability`; runs portable SQL (``_statements.Statements``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.availability = Availability()

    @contextmanager
    def guarded(self, action: str) -> Iterator[None]:
        """Fail at once while the server is known to be away; translate the driver's errors."""
        self.availability.check(action)
        try:
            yield
        except _DRIVER_ERRORS as exc:
            error = translate(exc, action)
            if isinstance(error, StoreUnreachable):
                self.availability.failed(error)
            raise error from exc
        self.availability.succeeded()

    async def one(self, action: str, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
        text, names = numbered(sql)
        with self.guarded(action):
            return await self.pool.fetchrow(text, *_arguments(names, parameters))

    async def all(
        self, action: str, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[Any]:
        text, names = numbered(sql)
        with self.guarded(action):
            return list(await self.pool.fetch(text, *_arguments(names, parameters)))

    async def run(self, action: str, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = ()) -> int:
        text, names = numbered(sql)
        with self.guarded(action):
            return rowcount(await self.pool.execute(text, *_arguments(names, parameters)))
