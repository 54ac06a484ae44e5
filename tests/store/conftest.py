from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from store import SqliteStore, open_sqlite_store


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "mcpgw.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    async with open_sqlite_store(db_path) as opened:
        yield opened
