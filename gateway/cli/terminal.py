"""`mcpgw sessions`: the record, for an operator on the gateway's machine.

Reads the database file directly (WAL lets it do so beside a running gateway), every
organisation at once: whoever can read the file can read the record anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from store import Seek, open_sqlite_store

__all__ = ["show_session", "show_sessions"]

Print = Callable[[str], None]


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[tuple[str, ...]], out: Print) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


async def show_sessions(database: Path, limit: int, out: Print = print) -> int:
    async with open_sqlite_store(database) as store:
        page = await store.list_sessions(None, api_key_id=None, seek=Seek(), limit=limit)
    if not page.rows:
        out("no sessions recorded")
        return 0
    rows: list[tuple[str, ...]] = [("LAST CALL (UTC)", "SESSION", "CLIENT", "PROTOCOL", "CALLS", "STATE")]
    for s in page.rows:
        client = f"{s.client_name or '?'} {s.client_version or ''}".strip()
        state = "open" if s.ended_at is None else f"ended ({s.end_reason})"
        rows.append((_when(s.last_call_at), s.id, client, s.protocol_version, str(s.call_count), state))
    _table(rows, out)
    if page.more_after:
        out(f"(newest {limit} shown; --limit N for more)")
    return 0


async def show_session(database: Path, session_id: str, limit: int, out: Print = print) -> int:
    async with open_sqlite_store(database) as store:
        session = await store.get_session(None, session_id, api_key_id=None)
        if session is None:
            out(f"mcpgw: no session {session_id!r} (use the SESSION column of `mcpgw sessions`)")
            return 1
        page = await store.list_invocations(session.id, seek=Seek(), limit=limit)
    client = f"{session.client_name or '?'} {session.client_version or ''}".strip()
    out(f"session {session.id}  {client}  {session.protocol_version}  {session.call_count} call(s)")
    if not page.rows:
        out("no invocations")
        return 0
    rows: list[tuple[str, ...]] = [("TIME (UTC)", "TOOL", "OUTCOME", "MS", "TRACE ID")]
    for call in page.rows:
        rows.append(
            (
                _when(call.created_at),
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
