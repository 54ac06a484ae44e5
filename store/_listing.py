"""Keyset reads of recorded sessions and invocations.

Every page is one index range scan: rows past a (sort value, seq) position, in index order,
``LIMIT n + 1`` (the extra row says whether the walk can go on), plus a one-row probe for
whether anything lies on the other side. No OFFSET and no COUNT, so page 50,000 costs what
page 1 costs. The SQL is what both backends accept (``_statements.py``); row values compare
lexicographically, and both turn that into an index range.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from ._statements import Statements
from ._timestamps import from_unix_ms
from .models import Page, RecordedInvocation, RecordedSession, Seek

__all__ = ["SESSION_COLUMNS", "find_session", "get_session", "list_invocations", "list_sessions"]

T = TypeVar("T")

SESSION_COLUMNS = (
    "id, mcp_session_id, organisation_id, api_key_id, client_id, client_name, client_version,"
    " protocol_version, started_at, last_call_at, call_count, ended_at, end_reason, seq"
)
_INVOCATION_COLUMNS = (
    "id, method, tool_name, upstream, upstream_name, request_id, arguments_json, arguments_truncated,"
    " result_json, result_truncated, success, outcome, duration_ms, upstream_ms, trace_id, created_at, seq"
)


def session_from_row(row: Any) -> RecordedSession:
    return RecordedSession(
        id=row[0],
        mcp_session_id=row[1],
        organisation_id=row[2],
        api_key_id=row[3],
        client_id=row[4],
        client_name=row[5],
        client_version=row[6],
        protocol_version=row[7],
        started_at=from_unix_ms(row[8]),
        last_call_at=from_unix_ms(row[9]),
        call_count=row[10],
        ended_at=None if row[11] is None else from_unix_ms(row[11]),
        end_reason=row[12],
        key=(row[9], row[13]),
    )


def _invocation_from_row(session_id: str, row: Any) -> RecordedInvocation:
    return RecordedInvocation(
        id=row[0],
        session_id=session_id,
        method=row[1],
        tool_name=row[2],
        upstream=row[3],
        upstream_name=row[4],
        request_id=row[5],
        arguments_json=row[6],
        arguments_truncated=bool(row[7]),
        result_json=row[8],
        result_truncated=bool(row[9]),
        success=bool(row[10]),
        outcome=row[11],
        duration_ms=row[12],
        upstream_ms=row[13],
        trace_id=row[14],
        created_at=from_unix_ms(row[15]),
        key=(row[15], row[16]),
    )


async def _keyset_page(
    db: Statements,
    *,
    select: str,
    scope: str,
    scope_args: tuple[object, ...],
    sort: str,
    descending: bool,
    seek: Seek,
    limit: int,
    convert: Callable[[Any], T],
    key_of: Callable[[T], tuple[int, int]],
) -> Page[T]:
    """One page of ``select … WHERE scope`` ordered by (``sort``, seq), newest first if
    ``descending``, starting at ``seek``."""

    def beyond(key: tuple[int, int], toward_end: bool, inclusive: bool) -> tuple[str, tuple[object, ...]]:
        op = ">" if toward_end != descending else "<"
        return f" AND ({sort}, seq) {op}{'=' if inclusive else ''} (?, ?)", key

    def order(toward_end: bool) -> str:
        direction = "ASC" if toward_end != descending else "DESC"
        return f" ORDER BY {sort} {direction}, seq {direction}"

    toward_end = not seek.backward
    where, args = ("", ()) if seek.key is None else beyond(seek.key, toward_end, seek.inclusive)
    sql = f"{select} WHERE {scope}{where}{order(toward_end)} LIMIT ?"
    rows = [convert(row) for row in await db.all("list records", sql, (*scope_args, *args, limit + 1))]
    more_in_walk = len(rows) > limit
    rows = rows[:limit]
    if seek.backward:
        rows.reverse()

    async def anything_beyond(key: tuple[int, int], toward_end: bool, inclusive: bool) -> bool:
        where, args = beyond(key, toward_end, inclusive)
        probe = f"SELECT 1 FROM {select.partition(' FROM ')[2]} WHERE {scope}{where} LIMIT 1"
        return await db.one("list records", probe, (*scope_args, *args)) is not None

    # The other side of the page: nothing before the start of the listing; otherwise look.
    if seek.key is None:
        other = False
    elif rows:
        edge = key_of(rows[-1] if seek.backward else rows[0])
        other = await anything_beyond(edge, seek.backward, False)
    else:
        other = await anything_beyond(seek.key, seek.backward, not seek.inclusive)
    if seek.backward:
        return Page(tuple(rows), more_before=more_in_walk, more_after=other)
    return Page(tuple(rows), more_before=other, more_after=more_in_walk)


async def list_sessions(
    db: Statements,
    organisation_id: str | None,
    api_key_id: str | None,
    seek: Seek,
    limit: int,
    client_name: str | None = None,
) -> Page[RecordedSession]:
    conditions: list[str] = []
    args: tuple[object, ...] = ()
    if organisation_id is not None:
        # Each combination has an index whose columns are these, then last_call_at.
        conditions, args = ["organisation_id = ?"], (organisation_id,)
        if api_key_id is not None:
            conditions, args = [*conditions, "api_key_id = ?"], (*args, api_key_id)
        if client_name is not None:
            conditions, args = [*conditions, "client_name = ?"], (*args, client_name)
    scope = " AND ".join(conditions) or "1 = 1"
    return await _keyset_page(
        db,
        select=f"SELECT {SESSION_COLUMNS} FROM sessions",
        scope=scope,
        scope_args=args,
        sort="last_call_at",
        descending=True,
        seek=seek,
        limit=limit,
        convert=session_from_row,
        key_of=lambda s: s.key,
    )


async def get_session(
    db: Statements, organisation_id: str | None, session_id: str, api_key_id: str | None
) -> RecordedSession | None:
    sql = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?"
    args: tuple[object, ...] = (session_id,)
    if organisation_id is not None:
        sql, args = sql + " AND organisation_id = ?", (*args, organisation_id)
    if api_key_id is not None:
        sql, args = sql + " AND api_key_id = ?", (*args, api_key_id)
    row = await db.one("get session", sql, args)
    return None if row is None else session_from_row(row)


async def find_session(db: Statements, mcp_session_id: str) -> RecordedSession | None:
    sql = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE mcp_session_id = ? ORDER BY seq DESC LIMIT 1"
    row = await db.one("find session", sql, (mcp_session_id,))
    return None if row is None else session_from_row(row)


async def list_invocations(
    db: Statements, session_id: str, seek: Seek, limit: int
) -> Page[RecordedInvocation]:
    return await _keyset_page(
        db,
        select=f"SELECT {_INVOCATION_COLUMNS} FROM invocations",
        scope="session_seq = (SELECT seq FROM sessions WHERE id = ?)",
        scope_args=(session_id,),
        sort="created_at",
        descending=False,
        seek=seek,
        limit=limit,
        convert=partial(_invocation_from_row, session_id),
        key_of=lambda i: i.key,
    )
