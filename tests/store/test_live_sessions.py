"""The sessions replicas serve now (`live_sessions`): read by any replica, ended once, groups
opened once, idle ones ended by whichever replica asks first — on both backends."""

from __future__ import annotations

import uuid
from datetime import timedelta

import anyio

from store import LiveSession, SessionStart, Store, utc_now

T0 = utc_now().replace(microsecond=0)


def live(*, group: str | None = None, seen_s: float = 0.0) -> LiveSession:
    return LiveSession(
        mcp_session_id=uuid.uuid4().hex,
        record_id=str(uuid.uuid4()),
        organisation_id="org",
        api_key_id="key",
        grant_id=None,
        protocol_version="2025-11-25",
        handshake_json='{"clientInfo": {"name": "host"}}',
        last_seen_at=T0 + timedelta(seconds=seen_s),
        group_key=group,
    )


async def test_a_session_written_by_one_replica_is_read_whole_and_ended_once(store: Store) -> None:
    session = live()
    assert await store.open_live_session(session) == session
    assert await store.live_session(session.mcp_session_id) == session
    assert await store.end_live_session(session.mcp_session_id) is True
    assert await store.end_live_session(session.mcp_session_id) is False  # the second replica to try
    assert await store.live_session(session.mcp_session_id) is None


async def test_two_replicas_opening_one_group_at_once_both_get_the_first_ones_row(store: Store) -> None:
    rows = [live(group="g-1"), live(group="g-1")]
    got: list[LiveSession] = []

    async def open_one(row: LiveSession) -> None:
        got.append(await store.open_live_session(row))

    async with anyio.create_task_group() as tg:
        for row in rows:
            tg.start_soon(open_one, row)
    assert got[0] == got[1] and got[0] in rows


async def test_idle_sessions_are_ended_once_however_many_replicas_ask(store: Store) -> None:
    quiet, busy = live(seen_s=0), live(seen_s=0)
    quiet_group = live(group="g-2", seen_s=0)
    for row in (quiet, busy, quiet_group):
        await store.open_live_session(row)
    await store.sessions_seen([busy.mcp_session_id], T0 + timedelta(seconds=100))
    ended: list[list[LiveSession]] = []

    async def reap() -> None:  # sessions idle for 50 s, groups for 200 s
        ended.append(await store.end_idle_sessions(T0 + timedelta(seconds=50), T0 - timedelta(seconds=150)))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(reap)
    assert sorted(len(each) for each in ended) == [0, 0, 1]
    assert [row.mcp_session_id for each in ended for row in each] == [quiet.mcp_session_id]
    assert await store.live_session(busy.mcp_session_id) is not None  # seen since
    assert await store.live_session(quiet_group.mcp_session_id) is not None  # groups wait longer


async def test_seen_never_moves_a_session_back_in_time(store: Store) -> None:
    session = live(seen_s=100)
    await store.open_live_session(session)
    await store.sessions_seen([session.mcp_session_id], T0)  # a replica's late batch
    found = await store.live_session(session.mcp_session_id)
    assert found is not None and found.last_seen_at == T0 + timedelta(seconds=100)


async def test_a_start_on_replicas_ends_only_the_recorded_sessions_no_replica_serves(store: Store) -> None:
    served, lost = live(), live()
    await store.open_live_session(served)
    for row in (served, lost):
        start = SessionStart(
            id=row.record_id,
            mcp_session_id=row.mcp_session_id,
            organisation_id=(await store.ensure_organisation("org")).id,
            api_key_id=None,
            client_id=None,
            client_name="host",
            client_version="1",
            protocol_version="2025-11-25",
            started_at=T0,
        )
        await store.write_records([start])
    assert await store.end_open_sessions("gateway_restart", keep_live=True) == 1
    assert (await store.find_session(lost.mcp_session_id)).end_reason == "gateway_restart"  # type: ignore[union-attr]
    assert (await store.find_session(served.mcp_session_id)).ended_at is None  # type: ignore[union-attr]
