"""`mcpgw keys create|list|revoke`: API keys, for an operator on the gateway's machine.

They open the database file directly, beside a running gateway (WAL lets both use it). A key is
shown once, when it is created; `list` shows what identifies a key (its id and first characters)
and how it is used, never the key or its hash. `revoke` holds on a running gateway's very next
request: the store tells every process on the file (see `store/_revocations.py`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from api import render_key
from store import KeyNotFound, open_store

__all__ = ["create_key", "list_keys", "revoke_key"]

Print = Callable[[str], None]


async def create_key(
    database: Path | str, organisation: str, user: str | None, admin: bool, allow: list[str], deny: list[str]
) -> int:
    async with open_store(database, pool_size=2) as store:
        org = await store.ensure_organisation(organisation)
        created = await store.create_api_key(
            org.id, user_id=user, is_admin=admin, tools_allow=allow, tools_deny=deny
        )
    print(json.dumps({"organisationId": org.id, "apiKeyId": created.key.id, "key": created.secret}))
    return 0


async def list_keys(database: Path | str, organisation: str, as_json: bool, out: Print = print) -> int:
    async with open_store(database, pool_size=2) as store:
        org = await store.find_organisation(organisation)
        if org is None:
            print(f"mcpgw: no organisation {organisation!r}", file=sys.stderr)
            return 1
        keys = await store.list_api_keys(org.id)
    if as_json:
        out(json.dumps([render_key(key) for key in keys]))
        return 0
    if not keys:
        out(f"no API keys in {organisation}")
        return 0
    rows: list[tuple[str, ...]] = [
        (
            "ID",
            "PREFIX",
            "USER",
            "ADMIN",
            "ALLOW",
            "DENY",
            "CREATED (UTC)",
            "LAST USED (UTC)",
            "REVOKED (UTC)",
        )
    ]
    for key in keys:
        rows.append(
            (
                key.id,
                key.prefix,
                key.user_id or "-",
                "yes" if key.is_admin else "no",
                ",".join(key.tools_allow) or "-",
                ",".join(key.tools_deny) or "-",
                _when(key.created_at),
                _when(key.last_used_at),
                _when(key.revoked_at),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


async def revoke_key(database: Path | str, api_key_id: str) -> int:
    async with open_store(database, pool_size=2) as store:
        try:
            await store.revoke_api_key(api_key_id)
        except KeyNotFound:
            print(
                f"mcpgw: no API key {api_key_id!r} (see the ID column of `mcpgw keys list`)", file=sys.stderr
            )
            return 1
    print(json.dumps({"apiKeyId": api_key_id, "revoked": True}))
    return 0


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
