"""Migrating a PostgreSQL schema: the ``postgres`` scripts of ``migrations.MIGRATIONS``.

The version is the one row of ``mcpgw_schema`` (0 when the table is missing: an empty schema).
:func:`apply_postgres_migrations` runs every pending script and records the new version in one
transaction under a transaction-scoped advisory lock, reading the version inside it: PostgreSQL's
DDL is transactional, so a migration is all-or-nothing, and gateways starting at once on a new
database take turns (the second finds the schema migrated and does nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from .errors import SchemaVersionError
from .migrations import MIGRATIONS

__all__ = ["apply_postgres_migrations", "postgres_scripts", "read_postgres_version"]

# Any constant of our own: the advisory lock every migrating mcpgw takes ("mcpgw" in ASCII).
_MIGRATION_LOCK = 0x6D63706777


def postgres_scripts() -> tuple[str, ...]:
    """The PostgreSQL script of every step, in order."""
    return tuple(step.postgres for step in MIGRATIONS)


async def read_postgres_version(conn: asyncpg.Connection) -> int:
    """The schema's version: 0 for a schema mcpgw has never migrated."""
    if await conn.fetchval("SELECT to_regclass('mcpgw_schema')") is None:
        return 0
    version = await conn.fetchval("SELECT version FROM mcpgw_schema")
    return 0 if version is None else int(version)


def newer_than_known(found: int, known: int) -> SchemaVersionError:
    return SchemaVersionError(
        f"the database's schema is version {found}, newer than this mcpgw knows ({known}): "
        "a newer mcpgw migrated it; run that version"
    )


async def apply_postgres_migrations(conn: asyncpg.Connection, scripts: Sequence[str] | None = None) -> int:
    """Bring the schema up to ``len(scripts)`` and return that version; driver errors propagate
    (the caller translates them) after the transaction is rolled back."""
    scripts = postgres_scripts() if scripts is None else scripts
    target = len(scripts)
    async with conn.transaction():
        await conn.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK:d})")
        current = await read_postgres_version(conn)
        if current > target:
            raise newer_than_known(current, target)
        if current == target:
            return target
        if current == 0:
            await conn.execute("CREATE TABLE IF NOT EXISTS mcpgw_schema (version INTEGER NOT NULL)")
        for script in scripts[current:]:
            await conn.execute(script)  # no arguments: the simple protocol, several statements at once
        await conn.execute("DELETE FROM mcpgw_schema")
        await conn.execute("INSERT INTO mcpgw_schema (version) VALUES ($1)", target)
    return target
