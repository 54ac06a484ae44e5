import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import aiosqlite
import pytest

from store import SchemaVersionError, StoreError, open_sqlite_store
from store.migrations import MIGRATIONS, SCHEMA_VERSION, apply_migrations, split_statements


def _user_version(db_path: Path) -> int:
    with closing(sqlite3.connect(db_path)) as db:
        (version,) = db.execute("PRAGMA user_version").fetchone()
    return int(version)


def _tables(db_path: Path) -> set[str]:
    with closing(sqlite3.connect(db_path)) as db:
        rows = db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


@pytest.fixture
async def conn(db_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    async with aiosqlite.connect(db_path, isolation_level=None) as connection:
        yield connection


async def test_migrations_are_idempotent_and_set_user_version(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        organisation = await store.ensure_organisation("acme")
    async with open_sqlite_store(db_path) as store:
        assert await store.get_organisation(organisation.id) == organisation

    assert len(MIGRATIONS) == SCHEMA_VERSION
    assert _user_version(db_path) == SCHEMA_VERSION
    assert {"organisations", "api_keys"} <= _tables(db_path)


async def test_applying_migrations_again_changes_nothing(conn: aiosqlite.Connection, db_path: Path) -> None:
    assert await apply_migrations(conn) == SCHEMA_VERSION
    tables = _tables(db_path)

    assert await apply_migrations(conn) == SCHEMA_VERSION
    assert _tables(db_path) == tables
    assert not conn.in_transaction


async def test_only_pending_migrations_run(conn: aiosqlite.Connection, db_path: Path) -> None:
    await apply_migrations(conn, ["CREATE TABLE one (a);"])

    # Script 1 would fail if it ran again (the table exists), so success means it was skipped.
    assert await apply_migrations(conn, ["CREATE TABLE one (a);", "CREATE TABLE two (a);"]) == 2
    assert {"one", "two"} <= _tables(db_path)
    assert _user_version(db_path) == 2


async def test_failed_migration_leaves_schema_unchanged(conn: aiosqlite.Connection, db_path: Path) -> None:
    broken = ["CREATE TABLE one (a);", "CREATE TABLE two (a);\nINSERT INTO missing VALUES (1);"]

    with pytest.raises(sqlite3.OperationalError):
        await apply_migrations(conn, broken)

    assert not conn.in_transaction
    assert _user_version(db_path) == 0
    assert not {"one", "two"} & _tables(db_path)


async def test_database_from_a_newer_mcpgw_is_refused(db_path: Path) -> None:
    with closing(sqlite3.connect(db_path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

    with pytest.raises(SchemaVersionError):
        async with open_sqlite_store(db_path):
            pass

    assert issubclass(SchemaVersionError, StoreError)
    assert _user_version(db_path) == SCHEMA_VERSION + 1


def test_scripts_split_into_complete_statements() -> None:
    script = "CREATE TABLE a (x TEXT DEFAULT ';');\nCREATE TABLE b (y);\n"

    assert list(split_statements(script)) == [
        "CREATE TABLE a (x TEXT DEFAULT ';');",
        "CREATE TABLE b (y);",
    ]


def test_incomplete_statement_in_a_script_is_an_error() -> None:
    with pytest.raises(ValueError):
        list(split_statements("CREATE TABLE a (x);\nCREATE TABLE b (y)"))
