"""Writing what the recorder hands over, and pruning it again: plain (blocking) sqlite3 code.

These functions run in a worker thread on the store's writer connection, one call per thread
hop: ``write_records`` is the group commit, one ``BEGIN IMMEDIATE`` … ``COMMIT`` with a handful of
``executemany`` calls whatever the batch size, and each prune step is one short statement.
The caller makes sure only one of them uses the connection at a time (see ``SqliteStore``).
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Sequence

from ._timestamps import to_unix_ms
from .errors import StoreError
from .models import TASK_PENDING, InvocationRecord, RecordEvent, SessionEnd, SessionStart, TaskEnd

__all__ = ["PRUNE_BATCH", "oldest_kept_invocation", "prune_step", "write_records"]

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
# Found through the session's index (a session's calls, not the whole table); duration to the end.
_END_TASK = (
    "UPDATE invocations SET outcome = ?, success = ?, result_json = ?, result_truncated = ?,"
    " duration_ms = max(? - created_at, duration_ms)"
    " WHERE session_seq = (SELECT seq FROM sessions WHERE id = ?) AND id = ? AND outcome = ?"
)
_END_SESSION = "UPDATE sessions SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL"


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


def write_records(conn: sqlite3.Connection, events: Sequence[RecordEvent]) -> None:
    """Commit ``events`` as one transaction; sqlite3 errors propagate after a rollback.

    Starts are written before the invocations that point at them and ends after, so a batch
    may hold a whole session's life in any order the recorder saw it.
    """
    starts = [_session_row(e) for e in events if isinstance(e, SessionStart)]
    calls = [e for e in events if isinstance(e, InvocationRecord)]
    ends = [(to_unix_ms(e.ended_at), e.reason, e.id) for e in events if isinstance(e, SessionEnd)]
    task_ends = [_task_end_row(e) for e in events if isinstance(e, TaskEnd)]
    activity: dict[str, tuple[int, int]] = defaultdict(lambda: (0, 0))
    for call in calls:
        count, last = activity[call.session_id]
        activity[call.session_id] = (count + 1, max(last, to_unix_ms(call.created_at)))
    conn.execute("BEGIN IMMEDIATE")
    try:
        if starts:
            conn.executemany(_INSERT_SESSION, starts)
        if calls:
            written = conn.executemany(_INSERT_INVOCATION, [_invocation_row(c) for c in calls]).rowcount
            if written != len(calls):
                # Reported, never swallowed: the recorder must not answer a call it did not keep.
                raise StoreError(f"{len(calls) - written} invocation(s) name a session that has no row")
            conn.executemany(_COUNT_CALLS, [(n, last, sid) for sid, (n, last) in activity.items()])
        if task_ends:
            conn.executemany(_END_TASK, task_ends)
        if ends:
            conn.executemany(_END_SESSION, ends)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _task_end_row(end: TaskEnd) -> tuple[object, ...]:
    success = end.outcome == "ok"
    return (end.outcome, success, end.result_json, end.result_truncated, to_unix_ms(end.ended_at),
            end.session_id, end.invocation_id, TASK_PENDING)  # fmt: skip


def oldest_kept_invocation(conn: sqlite3.Connection, keep: int) -> int | None:
    """A row number below which every invocation is beyond the newest ``keep``; None when there
    are no more than ``keep``. A walk down the rowid, in the background only."""
    row = conn.execute("SELECT seq FROM invocations ORDER BY seq DESC LIMIT 1 OFFSET ?", (keep,)).fetchone()
    return None if row is None else int(row[0]) + 1


def prune_step(conn: sqlite3.Connection, step: str, value: int) -> int:
    """Run the prune statement ``PRUNE_STEPS[step]`` once (at most ``PRUNE_BATCH`` rows, its own
    transaction) with ``value`` (a cutoff in unix ms, or a row count); return the rows deleted."""
    return conn.execute(PRUNE_STEPS[step], {"value": value, "batch": PRUNE_BATCH}).rowcount


PRUNE_BATCH = 1000
"""Rows per prune statement: each holds the write lock for a few milliseconds only."""

PRUNE_STEPS = {
    # Sessions idle since before the cutoff; ON DELETE CASCADE takes their invocations along.
    "sessions": "DELETE FROM sessions WHERE seq IN"
    " (SELECT seq FROM sessions WHERE last_call_at < :value ORDER BY last_call_at LIMIT :batch)",
    # Old calls of sessions still in use. Invocations are numbered in commit order, so they sit
    # at the lowest numbers: look at the oldest batch only, never scan the table (a call that
    # ran much longer than its neighbours goes in a later pass).
    "calls": "DELETE FROM invocations WHERE seq IN (SELECT seq FROM"
    " (SELECT seq, created_at FROM invocations ORDER BY seq LIMIT :batch) AS oldest"
    " WHERE created_at < :value)",
    # The oldest invocations, below the oldest one the configured maximum keeps.
    "excess": "DELETE FROM invocations WHERE seq IN"
    " (SELECT seq FROM invocations WHERE seq < :value ORDER BY seq LIMIT :batch)",
}
