"""``Statements``: what code shared by both backends runs its SQL through.

The SQL is in the dialect SQLite and PostgreSQL both accept, with SQLite's ``?`` or ``:name``
markers; each backend runs it on its own connection and translates its own driver's errors
(PostgreSQL's numbers the markers, ``_pg.Portable``). ``action`` names what was being done, for
the error's message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import aiosqlite

from ._sqlite_errors import translated

__all__ = ["Parameters", "SqliteStatements", "Statements"]

Parameters = Sequence[Any] | Mapping[str, Any]


class Statements(Protocol):
    async def one(self, action: str, sql: str, parameters: Parameters = ()) -> Any:
        """The first row, or ``None``."""
        ...

    async def all(self, action: str, sql: str, parameters: Parameters = ()) -> list[Any]:
        """Every row."""
        ...

    async def run(self, action: str, sql: str, parameters: Parameters = ()) -> int:
        """Run a statement; how many rows it changed."""
        ...


class SqliteStatements:
    """Statements on the SQLite store's aiosqlite connection."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def one(self, action: str, sql: str, parameters: Parameters = ()) -> Any:
        with translated(action):
            async with self._conn.execute(sql, parameters) as cursor:
                return await cursor.fetchone()

    async def all(self, action: str, sql: str, parameters: Parameters = ()) -> list[Any]:
        with translated(action):
            async with self._conn.execute(sql, parameters) as cursor:
                return list(await cursor.fetchall())

    async def run(self, action: str, sql: str, parameters: Parameters = ()) -> int:
        with translated(action):
            async with self._conn.execute(sql, parameters) as cursor:
                return cursor.rowcount
