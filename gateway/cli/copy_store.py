"""`mcpgw migrate --from sqlite:///path`: copy a SQLite database into an empty PostgreSQL schema.

Every table, row for row, in one transaction, in the order the foreign keys need; sealed values
are copied as they are (they stay sealed under the same key, bound to the same table, row and
column), keys as their hashes. The identity columns (``seq``) keep their values, so cursors
handed out before the move still point where they did, and continue past them afterwards.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import anyio
import anyio.to_thread
import asyncpg

from store import StoreError, open_postgres_store
from store._pg import translate

__all__ = ["copy_into_postgres"]

# Parents before children (foreign keys).
_TABLES = (
    "organisations",
    "api_keys",
    "sessions",
    "invocations",
    "gateway_secrets",
    "oauth_clients",
    "credentials",
    "auth_flows",
    "signin_clients",
    "signin_codes",
    "signin_grants",
    "signin_tokens",
)
_ORDER = {"api_keys": "rowid", "sessions": "seq", "invocations": "seq"}
_IDENTITIES = (("api_keys", "seq"), ("sessions", "seq"), ("invocations", "seq"))
_CHUNK = 10_000


def _rows(source: Path, table: str) -> tuple[list[str], list[tuple[object, ...]]]:
    with closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as db:
        order = f" ORDER BY {_ORDER[table]}" if table in _ORDER else ""
        cursor = db.execute(f"SELECT * FROM {table}{order}")  # names from the fixed list above
        columns = [d[0] for d in cursor.description]
        return columns, cursor.fetchall()


async def copy_into_postgres(source: Path, url: str) -> dict[str, int]:
    """Copy every row of the SQLite file `source` into the PostgreSQL database at `url` (migrated
    first, and empty); how many rows of each table. Raises StoreError on a non-empty target."""
    if not await anyio.Path(source).is_file():
        raise StoreError(f"no SQLite database at {source}")
    async with open_postgres_store(url, pool_size=1):
        pass  # creates or upgrades the schema, as the source's needs it
    copied: dict[str, int] = {}
    try:
        conn = await asyncpg.connect(url)
    except Exception as exc:
        raise translate(exc, "connect") from exc
    try:
        async with conn.transaction():
            if await conn.fetchval("SELECT count(*) FROM organisations"):
                raise StoreError(
                    "the PostgreSQL database holds organisations already: copy into an empty one"
                )
            for table in _TABLES:
                columns, rows = await anyio.to_thread.run_sync(_rows, source, table)
                for start in range(0, len(rows), _CHUNK):
                    await conn.copy_records_to_table(
                        table, records=rows[start : start + _CHUNK], columns=columns
                    )
                copied[table] = len(rows)
            for table, column in _IDENTITIES:
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"
                    f" (SELECT coalesce(max({column}), 0) + 1 FROM {table}), false)"
                )
    except asyncpg.PostgresError as exc:
        raise translate(exc, "copy") from exc
    finally:
        await conn.close()
    return copied
