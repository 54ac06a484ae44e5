"""`mcpgw grants list|revoke`: the sign-ins of hosts (issue 13), for an operator on the gateway's
machine, beside a running gateway as `keys` is.

A grant is one person's consent that one host's client may act as them: `list` shows whose it
is (the user and key that approved it), which client, for which MCP URL, and whether it is still
live; `revoke` ends it, and a running gateway refuses its tokens from the very next request (the
store signals the revocation marker, as revoking a key does). Tokens are never shown.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from api import render_grant
from store import open_store, utc_now

__all__ = ["list_grants", "revoke_grant"]

Print = Callable[[str], None]


async def list_grants(database: Path | str, organisation: str, as_json: bool, out: Print = print) -> int:
    async with open_store(database, pool_size=2) as store:
        org = await store.find_organisation(organisation)
        if org is None:
            print(f"mcpgw: no organisation {organisation!r}", file=sys.stderr)
            return 1
        grants = await store.signin.grants(org.id)
    if as_json:
        out(json.dumps([render_grant(grant) for grant in grants]))
        return 0
    if not grants:
        out(f"no sign-ins in {organisation}")
        return 0
    rows: list[tuple[str, ...]] = [
        ("ID", "USER", "KEY", "CLIENT", "RESOURCE", "SIGNED IN (UTC)", "LAST USED (UTC)", "REVOKED")
    ]
    for grant in grants:
        revoked = "-" if grant.revoked_at is None else f"{_when(grant.revoked_at)} ({grant.revoked_reason})"
        rows.append(
            (
                grant.id,
                grant.user_id or "-",
                grant.key_prefix,
                grant.client_name or grant.client_id,
                grant.resource,
                _when(grant.created_at),
                _when(grant.last_used_at),
                revoked,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


async def revoke_grant(database: Path | str, grant_id: str) -> int:
    async with open_store(database, pool_size=2) as store:
        revoked = await store.signin.revoke_grant(grant_id, "revoked", utc_now())
    if not revoked:
        print(
            f"mcpgw: no live sign-in {grant_id!r} (see the ID column of `mcpgw grants list`)", file=sys.stderr
        )
        return 1
    print(json.dumps({"grantId": grant_id, "revoked": True}))
    return 0


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
