"""Opening the store a database location names: a SQLite file, or a PostgreSQL server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from .postgres import DEFAULT_POOL_SIZE, open_postgres_store
from .protocol import Store
from .sealing import Sealer
from .sqlite import open_sqlite_store

__all__ = ["is_postgres_url", "open_store"]


def is_postgres_url(where: str | Path) -> bool:
    return isinstance(where, str) and where.startswith(("postgresql://", "postgres://"))


@asynccontextmanager
async def open_store(
    where: Path | str, *, sealer: Sealer | None = None, pool_size: int = DEFAULT_POOL_SIZE
) -> AsyncIterator[Store]:
    """The store at ``where``: a ``postgresql://`` URL, else the path of a SQLite file."""
    if is_postgres_url(where):
        async with open_postgres_store(str(where), sealer=sealer, pool_size=pool_size) as pg:
            yield pg
    else:
        async with open_sqlite_store(where, sealer=sealer) as sqlite:
            yield sqlite
