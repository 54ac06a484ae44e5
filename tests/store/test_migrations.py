import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import aiosqlite
import asyncpg
import pytest

from store import SchemaVersionError, StoreError, open_postgres_store, open_sqlite_store
from store._pg_schema import apply_postgres_migrations, postgres_scripts, read_postgres_version
from store.migrations import MIGRATIONS, SCHEMA_VERSION, apply_migrations, split_statements, sqlite_scripts
from tests.postgres import PostgresServer


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


# --- every step, on both backends --------------------------------------------------------------


@pytest.mark.parametrize("step", range(1, SCHEMA_VERSION + 1))
async def test_each_sqlite_step_applies_from_empty_and_from_the_step_before(
    tmp_path: Path, step: int
) -> None:
    scripts = sqlite_scripts()
    async with aiosqlite.connect(tmp_path / "empty.db", isolation_level=None) as empty:
        assert await apply_migrations(empty, scripts[:step]) == step
    async with aiosqlite.connect(tmp_path / "before.db", isolation_level=None) as before:
        await apply_migrations(before, scripts[: step - 1])
        assert await apply_migrations(before, scripts[:step]) == step
    assert _tables(tmp_path / "empty.db") == _tables(tmp_path / "before.db")


async def _pg_tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {row[0] for row in rows}


@pytest.mark.parametrize("step", range(1, SCHEMA_VERSION + 1))
async def test_each_postgres_step_applies_from_empty_and_from_the_step_before(
    postgres_server: PostgresServer, step: int
) -> None:
    scripts = postgres_scripts()
    tables = []
    for start in (0, step - 1):
        name = postgres_server.create_database()
        conn = await asyncpg.connect(postgres_server.url(name))
        try:
            await apply_postgres_migrations(conn, scripts[:start])
            assert await apply_postgres_migrations(conn, scripts[:step]) == step
            assert await read_postgres_version(conn) == step
            tables.append(await _pg_tables(conn))
        finally:
            await conn.close()
            postgres_server.drop_database(name)
    assert tables[0] == tables[1]


async def test_both_backends_end_with_the_same_tables(postgres_server: PostgresServer, db_path: Path) -> None:
    async with open_sqlite_store(db_path):
        pass
    name = postgres_server.create_database()
    try:
        async with open_postgres_store(postgres_server.url(name)):
            pass
        conn = await asyncpg.connect(postgres_server.url(name))
        try:
            # PostgreSQL's own: its schema version, and what replicas coordinate by (a SQLite
            # file has one process alone).
            coordination = {"cluster_instances", "cluster_leases", "cluster_messages"}
            assert await _pg_tables(conn) == _tables(db_path) | {"mcpgw_schema"} | coordination
        finally:
            await conn.close()
    finally:
        postgres_server.drop_database(name)


async def test_a_postgres_schema_from_a_newer_mcpgw_is_refused_naming_its_version(
    postgres_server: PostgresServer,
) -> None:
    name = postgres_server.create_database()
    try:
        async with open_postgres_store(postgres_server.url(name)):
            pass
        postgres_server.psql(f"UPDATE mcpgw_schema SET version = {SCHEMA_VERSION + 1}", name)
        with pytest.raises(SchemaVersionError, match=f"version {SCHEMA_VERSION + 1}"):
            async with open_postgres_store(postgres_server.url(name)):
                pass
    finally:
        postgres_server.drop_database(name)


async def test_a_failed_postgres_step_leaves_the_schema_as_it_was(postgres_server: PostgresServer) -> None:
    name = postgres_server.create_database()
    conn = await asyncpg.connect(postgres_server.url(name))
    try:
        with pytest.raises(asyncpg.PostgresError):
            await apply_postgres_migrations(
                conn, ["CREATE TABLE one (a int);", "INSERT INTO missing VALUES (1);"]
            )
        assert await read_postgres_version(conn) == 0
        assert await _pg_tables(conn) == set()
    finally:
        await conn.close()
        postgres_server.drop_database(name)
