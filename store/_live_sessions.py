"""The host sessions replicas serve now (``live_sessions``), in SQL both backends run.

A session's row is written before its first upstream is contacted and deleted when it ends,
by whichever replica ends it: a ``DELETE`` is what makes ending happen once (the replica whose
statement deleted the row records the end and tells the others). ``last_seen_at`` is written
in batches (each replica's reaper round), so it lags a replica's own view by one round.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from ._statements import Statements
from ._timestamps import from_unix_ms, to_unix_ms
from .models import LiveSession

__all__ = [
    "END_OPEN_SESSIONS",
    "KEEPING_LIVE",
    "end_idle_sessions",
    "end_live_session",
    "live_session",
    "open_live_session",
    "sessions_seen",
]

_COLUMNS = (
    "mcp_session_id, record_id, organisation_id, api_key_id, grant_id, protocol_version,"
    " handshake_json, last_seen_at, group_key"
)
# A previous run's sessions (one gateway per database) or, keeping live ones (replicas), those
# no replica serves: their end was lost (a replica killed between ending and recording it).
END_OPEN_SESSIONS = "UPDATE sessions SET ended_at = last_call_at, end_reason = ? WHERE ended_at IS NULL"
KEEPING_LIVE = " AND NOT EXISTS (SELECT 1 FROM live_sessions l WHERE l.record_id = sessions.id)"
_SEEN_BATCH = 500  # ids per UPDATE: well under either backend's limit on bound parameters


def _row(live: LiveSession) -> tuple[object, ...]:
    return (
        live.mcp_session_id,
        live.record_id,
        live.organisation_id,
        live.api_key_id,
        live.grant_id,
        live.protocol_version,
        live.handshake_json,
        to_unix_ms(live.last_seen_at),
        live.group_key,
    )


def _live(row: Any) -> LiveSession:
    return LiveSession(
        mcp_session_id=row[0],
        record_id=row[1],
        organisation_id=row[2],
        api_key_id=row[3],
        grant_id=row[4],
        protocol_version=row[5],
        handshake_json=row[6],
        last_seen_at=from_unix_ms(row[7]),
        group_key=row[8],
    )


async def open_live_session(db: Statements, live: LiveSession) -> LiveSession:
    """Write `live`, or, for a group another replica opened first, return that one's row (the
    group is recorded once, under one id, whichever replica serves it)."""
    for _ in range(3):  # the winner's row may be reaped between the two statements: rare
        await db.run(
            "open live session",
            f"INSERT INTO live_sessions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            _row(live),
        )
        if live.group_key is None:
            return live
        row = await db.one(
            "open live session",
            f"SELECT {_COLUMNS} FROM live_sessions WHERE group_key = ?",
            (live.group_key,),
        )
        if row is not None:
            return _live(row)
    return live


async def live_session(db: Statements, mcp_session_id: str) -> LiveSession | None:
    row = await db.one(
        "read live session",
        f"SELECT {_COLUMNS} FROM live_sessions WHERE mcp_session_id = ?",
        (mcp_session_id,),
    )
    return None if row is None else _live(row)


async def sessions_seen(db: Statements, mcp_session_ids: Collection[str], at: datetime) -> None:
    ids = list(mcp_session_ids)
    moment = to_unix_ms(at)
    for start in range(0, len(ids), _SEEN_BATCH):
        batch = ids[start : start + _SEEN_BATCH]
        marks = ", ".join("?" * len(batch))
        await db.run(
            "mark sessions seen",
            "UPDATE live_sessions SET last_seen_at = ?"
            f" WHERE last_seen_at < ? AND mcp_session_id IN ({marks})",
            (moment, moment, *batch),
        )


async def end_live_session(db: Statements, mcp_session_id: str) -> bool:
    """Delete the row: True if this call did (and so ends the session), False if it was gone."""
    deleted = await db.run(
        "end live session", "DELETE FROM live_sessions WHERE mcp_session_id = ?", (mcp_session_id,)
    )
    return deleted > 0


async def end_idle_sessions(
    db: Statements, sessions_before: datetime, groups_before: datetime
) -> list[LiveSession]:
    """Delete and return the sessions no replica has seen since `sessions_before` (groups:
    `groups_before`); each is returned to one caller only, however many run this at once."""
    rows = await db.all(
        "end idle sessions",
        f"DELETE FROM live_sessions WHERE (group_key IS NULL AND last_seen_at < ?)"
        f" OR (group_key IS NOT NULL AND last_seen_at < ?) RETURNING {_COLUMNS}",
        (to_unix_ms(sessions_before), to_unix_ms(groups_before)),
    )
    return [_live(row) for row in rows]
