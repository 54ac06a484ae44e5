"""The PostgreSQL group commit: a whole batch of record events in one statement, one round trip.

The recorder's writer commits everything queued as one ``write_records`` call. On PostgreSQL a
transaction of separate statements (``BEGIN``, inserts, updates, ``COMMIT``) costs a round trip
and a share of client CPU each; here the batch goes as four JSON documents to a PL/pgSQL function
that runs the same steps as ``_records.write_records``, in the same order, as one statement: so
one implicit transaction, durable when it returns (``synchronous_commit`` as the server has it,
on by default), and about half the client CPU of a pipelined ``executemany`` for a one-call
batch (``bench/pg_drivers.py``).

The function lives in the connection's ``pg_temp`` schema, created when the writer connection
opens: it goes with this code, never with the schema's version, so a rolling upgrade runs each
process's own. (So this connection must be a real session: not a transaction-pooling proxy.)
The writer connection is the recorder's alone, outside the pool: a commit never waits for a
pooled connection behind listing pages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import anyio
import asyncpg
import orjson

from ._pg import PgDatabase
from ._timestamps import to_unix_ms
from .errors import StoreError
from .models import TASK_PENDING, InvocationRecord, RecordEvent, SessionEnd, SessionStart, TaskEnd

__all__ = ["RecordWriter"]

_NO_SESSION = "MG001"  # SQLSTATE the function raises when an invocation names no session row

_FUNCTION = f"""
CREATE FUNCTION pg_temp.mcpgw_write_records(starts jsonb, calls jsonb, task_ends jsonb, ends jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    written bigint;
BEGIN
    IF jsonb_array_length(starts) > 0 THEN
        INSERT INTO sessions (id, mcp_session_id, organisation_id, api_key_id, client_id, client_name,
                              client_version, protocol_version, started_at, last_call_at)
        SELECT s.id, s.mcp_session_id, s.organisation_id, s.api_key_id, s.client_id, s.client_name,
               s.client_version, s.protocol_version, s.started_at, s.started_at
        FROM jsonb_to_recordset(starts) AS s(id text, mcp_session_id text,
             organisation_id text, api_key_id text, client_id text, client_name text,
             client_version text, protocol_version text, started_at bigint, n bigint)
        ORDER BY s.n
        ON CONFLICT (id) DO NOTHING;
    END IF;

    IF jsonb_array_length(calls) > 0 THEN
        -- One statement counts the calls on their sessions and inserts them: each session row is
        -- found once, and updated before the invocations' foreign key check locks it (the
        -- update's lock covers that check's).
        WITH c AS (
            SELECT * FROM jsonb_to_recordset(calls) AS c(id text, session_id text, method text,
                 tool_name text, upstream text, upstream_name text, request_id text,
                 arguments_json text, arguments_truncated integer, result_json text,
                 result_truncated integer, success integer, outcome text, duration_ms bigint,
                 upstream_ms bigint, trace_id text, created_at bigint, n bigint)
        ), counted AS (
            UPDATE sessions s SET call_count = s.call_count + a.n,
                last_call_at = GREATEST(s.last_call_at, a.last)
            FROM (SELECT c.session_id, count(*) AS n, max(c.created_at) AS last
                  FROM c GROUP BY c.session_id) a
            WHERE s.id = a.session_id
            RETURNING s.id, s.seq
        )
        INSERT INTO invocations (id, session_seq, method, tool_name, upstream, upstream_name,
                                 request_id, arguments_json, arguments_truncated, result_json,
                                 result_truncated, success, outcome, duration_ms, upstream_ms,
                                 trace_id, created_at)
        SELECT c.id, counted.seq, c.method, c.tool_name, c.upstream, c.upstream_name, c.request_id,
               c.arguments_json, c.arguments_truncated, c.result_json, c.result_truncated,
               c.success, c.outcome, c.duration_ms, c.upstream_ms, c.trace_id, c.created_at
        FROM c JOIN counted ON counted.id = c.session_id
        ORDER BY c.n;
        GET DIAGNOSTICS written = ROW_COUNT;
        IF written <> jsonb_array_length(calls) THEN
            -- Reported, never swallowed: the recorder must not answer a call it did not keep.
            RAISE EXCEPTION '% invocation(s) name a session that has no row',
                jsonb_array_length(calls) - written USING ERRCODE = '{_NO_SESSION}';
        END IF;
    END IF;

    IF jsonb_array_length(task_ends) > 0 THEN
        UPDATE invocations i SET outcome = t.outcome, success = t.success,
            result_json = t.result_json, result_truncated = t.result_truncated,
            duration_ms = GREATEST(t.ended_at - i.created_at, i.duration_ms)
        FROM jsonb_to_recordset(task_ends) AS t(session_id text, invocation_id text, outcome text,
             success integer, result_json text, result_truncated integer, ended_at bigint),
             sessions s
        WHERE s.id = t.session_id AND i.session_seq = s.seq AND i.id = t.invocation_id
          AND i.outcome = '{TASK_PENDING}';
    END IF;

    IF jsonb_array_length(ends) > 0 THEN
        UPDATE sessions s SET ended_at = e.ended_at, end_reason = e.reason
        FROM jsonb_to_recordset(ends) AS e(id text, ended_at bigint, reason text)
        WHERE s.id = e.id AND s.ended_at IS NULL;
    END IF;
END
$$
"""
_CALL = "SELECT pg_temp.mcpgw_write_records($1::jsonb, $2::jsonb, $3::jsonb, $4::jsonb)"
# An empty batch (the readiness check): a transaction id is only given where writes are taken,
# so a server in recovery (a standby) fails this as it would fail a commit.
_CAN_WRITE = "SELECT txid_current()"


def _start(e: SessionStart) -> dict[str, Any]:
    return {
        "id": e.id,
        "mcp_session_id": e.mcp_session_id,
        "organisation_id": e.organisation_id,
        "api_key_id": e.api_key_id,
        "client_id": e.client_id,
        "client_name": e.client_name,
        "client_version": e.client_version,
        "protocol_version": e.protocol_version,
        "started_at": to_unix_ms(e.started_at),
    }


def _call(c: InvocationRecord) -> dict[str, Any]:
    return {
        "id": c.id,
        "session_id": c.session_id,
        "method": c.method,
        "tool_name": c.tool_name,
        "upstream": c.upstream,
        "upstream_name": c.upstream_name,
        "request_id": c.request_id,
        "arguments_json": c.arguments_json,
        "arguments_truncated": int(c.arguments_truncated),
        "result_json": c.result_json,
        "result_truncated": int(c.result_truncated),
        "success": int(c.success),
        "outcome": c.outcome,
        "duration_ms": c.duration_ms,
        "upstream_ms": c.upstream_ms,
        "trace_id": c.trace_id,
        "created_at": to_unix_ms(c.created_at),
    }


def _task_end(e: TaskEnd) -> dict[str, Any]:
    return {
        "session_id": e.session_id,
        "invocation_id": e.invocation_id,
        "outcome": e.outcome,
        "success": int(e.outcome == "ok"),
        "result_json": e.result_json,
        "result_truncated": int(e.result_truncated),
        "ended_at": to_unix_ms(e.ended_at),
    }


def _end(e: SessionEnd) -> dict[str, Any]:
    return {"id": e.id, "ended_at": to_unix_ms(e.ended_at), "reason": e.reason}


def documents(events: Sequence[RecordEvent]) -> tuple[str, str, str, str]:
    """The batch as the function's four arguments (JSON text)."""
    starts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    task_ends: list[dict[str, Any]] = []
    ends: list[dict[str, Any]] = []
    for event in events:
        # `n` keeps the batch's order: rows are numbered (`seq`) in the order they were queued.
        if isinstance(event, InvocationRecord):
            calls.append({**_call(event), "n": len(calls)})
        elif isinstance(event, SessionStart):
            starts.append({**_start(event), "n": len(starts)})
        elif isinstance(event, SessionEnd):
            ends.append(_end(event))
        elif isinstance(event, TaskEnd):
            task_ends.append(_task_end(event))
    return tuple(orjson.dumps(part).decode() for part in (starts, calls, task_ends, ends))  # type: ignore[return-value]


def conn_lost(exc: asyncpg.PostgresError) -> bool:
    """Whether the server ended the session (shutdown, terminated backend): reconnect next time."""
    return str(exc.sqlstate or "")[:2] in ("08", "57")


class RecordWriter:
    """The recorder's own connection: opened on first use and again after it is lost, one batch
    at a time (the recorder has one writer; the lock keeps anything else from interleaving)."""

    def __init__(self, database: PgDatabase, connect: Any) -> None:
        self._database = database
        self._connect = connect  # () -> awaitable asyncpg.Connection, the pool's parameters
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._conn = None
        conn: asyncpg.Connection = await self._connect()
        try:
            await conn.execute(_FUNCTION)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close(timeout=1)
            raise
        self._conn = conn
        return conn

    async def write(self, events: Sequence[RecordEvent]) -> None:
        arguments = documents(events) if events else None
        # A commit asked for is never cancelled halfway, nor before it starts (as the SQLite
        # writer's): it finishes or fails; a caller cancelled meanwhile sees it at its next
        # checkpoint. The lock is asyncio's: uncontended, anyio's yields to the event loop
        # on the way in and out, which cost more client CPU than the commit's own Python.
        with anyio.CancelScope(shield=True):
            async with self._lock:
                with self._database.guarded("write records"):
                    try:
                        conn = await self._connection()
                        if arguments is None:
                            await conn.fetchval(_CAN_WRITE)
                        else:
                            await conn.execute(_CALL, *arguments)
                    except asyncpg.PostgresError as exc:
                        if exc.sqlstate == _NO_SESSION:
                            raise StoreError(f"write records: {exc.args[0]}") from exc
                        if conn_lost(exc):
                            self._drop()
                        raise
                    except BaseException:
                        self._drop()
                        raise

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def aclose(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await conn.close(timeout=2)
                    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                        conn.terminate()
