"""`mcpgw sessions`: the record, for an operator on the gateway's machine.

Reads the database file directly (WAL lets it do so beside a running gateway), every
organisation at once: whoever can read the file can read the record anyway. A session is shown
by its record id (the SESSION column, the API's `id`) or by the `Mcp-Session-Id` its host used,
as the gateway's log lines show it; USER is the user its API key is bound to.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from store import RecordedSession, Seek, Store, open_store

__all__ = ["show_session", "show_sessions"]

Print = Callable[[str], None]


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[tuple[str, ...]], out: Print) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


async def _users(store: Store, sessions: list[RecordedSession]) -> dict[str, str]:
    """The user each session's API key is bound to, by key id (keys bound to none are left out)."""
    users: dict[str, str] = {}
    for organisation_id in {s.organisation_id for s in sessions if s.api_key_id is not None}:
        for key in await store.list_api_keys(organisation_id):
            if key.user_id is not None:
                users[key.id] = key.user_id
    return users


def _user(session: RecordedSession, users: dict[str, str]) -> str:
    return users.get(session.api_key_id, "-") if session.api_key_id is not None else "-"


async def show_sessions(database: Path | str, limit: int, out: Print = print) -> int:
    async with open_store(database, pool_size=2) as store:
        page = await store.list_sessions(None, api_key_id=None, seek=Seek(), limit=limit)
        users = await _users(store, list(page.rows))
    if not page.rows:
        out("no sessions recorded")
        return 0
    rows: list[tuple[str, ...]] = [
        ("LAST CALL (UTC)", "SESSION", "USER", "CLIENT", "PROTOCOL", "CALLS", "STATE")
    ]
    for s in page.rows:
        client = f"{s.client_name or '?'} {s.client_version or ''}".strip()
        state = "open" if s.ended_at is None else f"ended ({s.end_reason})"
        user = _user(s, users)
        rows.append((_when(s.last_call_at), s.id, user, client, s.protocol_version, str(s.call_count), state))
    _table(rows, out)
    if page.more_after:
        out(f"(newest {limit} shown; --limit N for more)")
    return 0


async def show_session(database: Path | str, session_id: str, limit: int, out: Print = print) -> int:
    async with open_store(database, pool_size=2) as store:
        session = await store.get_session(None, session_id, api_key_id=None)
        if session is None:
            session = await store.find_session(session_id)  # an Mcp-Session-Id, as a log line shows
        if session is None:
            out(
                f"mcpgw: no session {session_id!r} (use the SESSION column of `mcpgw sessions`, "
                "or an Mcp-Session-Id)"
            )
            return 1
        page = await store.list_invocations(session.id, seek=Seek(), limit=limit)
        user = _user(session, await _users(store, [session]))
    client = f"{session.client_name or '?'} {session.client_version or ''}".strip()
    out(
        f"session {session.id}  user {user}  {client}  {session.protocol_version}  "
        f"{session.call_count} call(s)  Mcp-Session-Id {session.mcp_session_id}"
    )
    if not page.rows:
        out("no invocations")
        return 0
    rows: list[tuple[str, ...]] = [("TIME (UTC)", "METHOD", "TOOL", "OUTCOME", "MS", "TRACE ID")]
    for call in page.rows:
        rows.append(
            (
                _when(call.created_at),
                call.method,
                call.tool_name,
                call.outcome,
                str(call.duration_ms),
                call.trace_id or "-",
            )
        )
    _table(rows, out)
    if page.more_after:
        out(f"(first {limit} shown; --limit N for more)")
    return 0
