"""`mcpgw migrate`: create the database's schema or bring it up to this mcpgw's version, and the
start-up check `mcpgw serve` runs before it listens.

Opening the store migrates it (both backends, all-or-nothing, safe with several processes at
once); this command does only that, so a deployment can migrate before it starts new gateways.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gateway.config import GatewayConfig
from store import StoreError, open_store
from store.migrations import SCHEMA_VERSION

__all__ = ["check_database", "migrate"]

_SQLITE = "sqlite:///"


async def check_database(config: GatewayConfig) -> str | None:
    """None if the configured database opens (reachable, login taken, schema not newer), else
    one line saying what is wrong and where."""
    try:
        async with open_store(config.store_at, pool_size=1):
            return None
    except StoreError as exc:
        return f"database {config.database_shown}: {exc}"


async def migrate(config: GatewayConfig, source: str | None = None) -> int:
    if source is not None:
        return await _copy(config, source)
    if (problem := await check_database(config)) is not None:
        print(f"mcpgw: {problem}", file=sys.stderr)
        return 1
    print(json.dumps({"database": config.database_shown, "schemaVersion": SCHEMA_VERSION}))
    return 0


async def _copy(config: GatewayConfig, source: str) -> int:
    from gateway.cli.copy_store import copy_into_postgres

    if config.postgres is None:
        print(
            "mcpgw: --from copies into PostgreSQL: set database: postgresql://… in the config",
            file=sys.stderr,
        )
        return 2
    if not source.startswith(_SQLITE):
        print(f"mcpgw: --from takes {_SQLITE}PATH (a SQLite database)", file=sys.stderr)
        return 2
    path = Path(source[len(_SQLITE) :])
    try:
        copied = await copy_into_postgres(path, config.postgres.url)
    except StoreError as exc:
        print(f"mcpgw: database {config.database_shown}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"from": str(path), "database": config.database_shown, "copied": copied}))
    return 0
