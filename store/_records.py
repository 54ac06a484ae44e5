"""Writing what the recorder hands over, and pruning it again: SQL over one aiosqlite connection.

``write_records`` is the group commit: one ``BEGIN IMMEDIATE`` … ``COMMIT`` per batch, a handful
of ``executemany`` calls whatever the batch size. Its connection must be used by nothing else
while it runs, or other statements would join the transaction (see ``SqliteStore``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

import aiosqlite
import anyio

from ._timestamps import to_unix_ms
from .errors import StoreError
from .models import InvocationRecord, RecordEvent, SessionEnd, SessionStart

__all__ = ["prune_records", "write_records"]

_INSERT_SESSION = (
    "INSERT INTO sessions (id, mcp_session_id, organisation_id, api_key_id, client_id, client_name,"
    " client_version, protocol_version, started_at, last_call_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (id) DO NOTHING"
)
# INSERT … SELECT: an invocation whose session row is missing inserts nothing; write_records then
# fails the batch with a StoreError naming the cause (the recorder retries the rows one by one).
_INSERT_INVOCATION = (
    "INSERT INTO invocations (id, session_seq, method, tool_name, upstream, upstream_name, request_id,"
    " arguments_json, arguments_truncated, result_json, result_truncated, success, outcome, duration_ms,"
    " upstream_ms, trace_id, created_at)"
    " SELECT ?, seq, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM sessions WHERE id = ?"
)
_COUNT_CALLS = (
    "UPDATE sessions SET call_count = call_count + ?, last_call_at = max(last_call_at, ?) WHERE id = ?"
)
_END_SESSION = "UPDATE sessions SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL"
_PRUNE_BATCH = 5000


def _session_row(start: SessionStart) -> tuple[object, ...]:
    started = to_unix_ms(start.started_at)
    return (
        start.id,
        start.mcp_session_id,
        start.organisation_id,
        start.api_key_id,
        start.client_id,
        start.client_name,
        start.client_version,
        start.protocol_version,
        started,
        started,
    )


def _invocation_row(call: InvocationRecord) -> tuple[object, ...]:
    return (
        call.id,
        call.method,
        call.tool_name,
        call.upstream,
        call.upstream_name,
        call.request_id,
        call.arguments_json,
        int(call.arguments_truncated),
        call.result_json,
        int(call.result_truncated),
        int(call.success),
        call.outcome,
        call.duration_ms,
        call.upstream_ms,
        call.trace_id,
        to_unix_ms(call.created_at),
        call.session_id,
    )


async def write_records(conn: aiosqlite.Connection, events: Sequence[RecordEvent]) -> None:
    """Commit ``events`` as one transaction; sqlite3 errors propagate after a rollback.

    Starts are written before the invocations that point at them and ends after, so a batch
    may hold a whole session's life in any order the recorder saw it.
    """
    starts = [_session_row(e) for e in events if isinstance(e, SessionStart)]
    calls = [e for e in events if isinstance(e, InvocationRecord)]
    ends = [(to_unix_ms(e.ended_at), e.reason, e.id) for e in events if isinstance(e, SessionEnd)]
    activity: dict[str, tuple[int, int]] = defaultdict(lambda: (0, 0))
    for call in calls:
        count, last = activity[call.session_id]
        activity[call.session_id] = (count + 1, max(last, to_unix_ms(call.created_at)))
    await conn.execute("BEGIN IMMEDIATE")
    try:
        if starts:
            await conn.executemany(_INSERT_SESSION, starts)
        if calls:
            async with conn.executemany(_INSERT_INVOCATION, [_invocation_row(c) for c in calls]) as cursor:
                written = cursor.rowcount
            if written != len(calls):
                # Reported, never swallowed: the recorder must not answer a call it did not keep.
                raise StoreError(f"{len(calls) - written} invocation(s) name a session that has no row")
            await conn.executemany(_COUNT_CALLS, [(n, last, sid) for sid, (n, last) in activity.items()])
        if ends:
            await conn.executemany(_END_SESSION, ends)
        await conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with anyio.CancelScope(shield=True):
                await conn.execute("ROLLBACK")
        raise


async def _delete_batch(conn: aiosqlite.Connection, sql: str, parameters: tuple[object, ...]) -> int:
    async with conn.execute(sql, parameters) as cursor:
        deleted = cursor.rowcount
    await anyio.lowlevel.checkpoint()
    return deleted


async def prune_records(
    conn: aiosqlite.Connection, *, older_than: datetime | None, max_invocations: int | None
) -> int:
    """Delete sessions whose last call is older than ``older_than`` (with their invocations) and
    old calls of sessions still in use, then the oldest invocations beyond ``max_invocations``;
    return how many rows went (a deleted session's own invocations are not counted).

    Runs in the background, never on a request's path. Each statement deletes at most one
    batch and is its own short transaction, so the recorder's writer never waits long.
    """
    deleted = 0
    if older_than is not None:
        cutoff = to_unix_ms(older_than)
        while True:  # ON DELETE CASCADE takes each session's invocations with it
            n = await _delete_batch(
                conn,
                "DELETE FROM sessions WHERE seq IN"
                " (SELECT seq FROM sessions WHERE last_call_at < ? ORDER BY last_call_at LIMIT ?)",
                (cutoff, _PRUNE_BATCH),
            )
            deleted += n
            if n < _PRUNE_BATCH:
                break
        # Invocations are numbered in commit order, so the old calls of long-lived sessions sit
        # at the lowest numbers: look at the oldest batch only, never scan the whole table. A
        # call that ran much longer than its neighbours goes in a later pass.
        while n := await _delete_batch(
            conn,
            "DELETE FROM invocations WHERE seq IN (SELECT seq FROM"
            " (SELECT seq, created_at FROM invocations ORDER BY seq LIMIT ?) WHERE created_at < ?)",
            (_PRUNE_BATCH, cutoff),
        ):
            deleted += n
    if max_invocations is not None:
        async with conn.execute("SELECT count(*) FROM invocations") as cursor:
            row = await cursor.fetchone()
        excess = 0 if row is None else int(row[0]) - max_invocations
        while excess > 0:
            n = await _delete_batch(
                conn,
                "DELETE FROM invocations WHERE seq IN (SELECT seq FROM invocations ORDER BY seq LIMIT ?)",
                (min(excess, _PRUNE_BATCH),),
            )
            if n == 0:
                break
            deleted += n
            excess -= n
    return deleted
