from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from store import Sealer, SqliteStore, Store, open_postgres_store, open_sqlite_store
from tests.postgres import PostgresServer

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "mcpgw.db"


@pytest.fixture
async def sqlite_store(db_path: Path) -> AsyncIterator[SqliteStore]:
    async with open_sqlite_store(db_path) as opened:
        yield opened


@asynccontextmanager
async def backend_store(
    request: pytest.FixtureRequest, db_path: Path, sealer: Sealer | None = None
) -> AsyncIterator[Store]:
    """The store on the backend the test is parametrised with: a SQLite file at `db_path`, or a
    new database of its own on the test PostgreSQL server (dropped after)."""
    if request.param == "sqlite":
        async with open_sqlite_store(db_path, sealer=sealer) as sqlite:
            yield sqlite
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create_database()
    try:
        async with open_postgres_store(server.url(name), sealer=sealer) as pg:
            yield pg
    finally:
        server.drop_database(name)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, db_path: Path) -> AsyncIterator[Store]:
    """The store on each backend (tests of one backend's own behaviour take `sqlite_store`)."""
    async with backend_store(request, db_path) as opened:
        yield opened
