"""`mcpgw migrate`: create the database's schema or bring it up to this mcpgw's version, and the
start-up check `mcpgw serve` runs before it listens.

Opening the store migrates it (both backends, all-or-nothing, safe with several processes at
once); this command does only that, so a deployment can migrate before it starts new gateways.
"""

from __future__ import annotations

import json
import sys

from gateway.config import GatewayConfig
from store import StoreError, open_store
from store.migrations import SCHEMA_VERSION

__all__ = ["check_database", "migrate"]


async def check_database(config: GatewayConfig) -> str | None:
    """None if the configured database opens (reachable, login taken, schema not newer), else
    one line saying what is wrong and where."""
    try:
        async with open_store(config.store_at, pool_size=1):
            return None
    except StoreError as exc:
        return f"database {config.database_shown}: {exc}"


async def migrate(config: GatewayConfig) -> int:
    if (problem := await check_database(config)) is not None:
        print(f"mcpgw: {problem}", file=sys.stderr)
        return 1
    print(json.dumps({"database": config.database_shown, "schemaVersion": SCHEMA_VERSION}))
    return 0
