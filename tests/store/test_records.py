"""Recorded sessions and invocations in SQLite: group commit, keyset pages, retention."""

from __future__ import annotations

import dataclasses
import sqlite3
import uuid
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path

import anyio
import pytest

from store import (
    InvocationRecord,
    RecordEvent,
    Seek,
    SessionEnd,
    SessionStart,
    SqliteStore,
    Store,
    StoreError,
    TaskEnd,
    open_sqlite_store,
    utc_now,
)
from store._writer_thread import CHECKPOINT_EVERY

T0 = utc_now()


def start(org: str, *, key: str | None = None, at: datetime = T0, client: str = "host") -> SessionStart:
    return SessionStart(
        id=str(uuid.uuid4()),
        mcp_session_id=uuid.uuid4().hex,
        organisation_id=org,
        api_key_id=key,
        client_id=None,
        client_name=client,
        client_version="1",
        protocol_version="2025-11-25",
        started_at=at,
    )


def call(session: SessionStart, n: int, at: datetime) -> InvocationRecord:
    return InvocationRecord(
        id=str(uuid.uuid4()),
        session_id=session.id,
        method="tools/call",
        tool_name=f"tool-{n}",
        upstream="up",
        upstream_name="tool",
        request_id=str(n),
        arguments_json="{}",
        arguments_truncated=False,
        result_json="{}",
        result_truncated=False,
        success=True,
        outcome="ok",
        duration_ms=1,
        upstream_ms=1,
        trace_id="0" * 31 + "1",
        created_at=at,
    )


async def test_a_batch_counts_calls_into_their_sessions(store: Store) -> None:
    org = (await store.ensure_organisation("o")).id
    first, second = start(org), start(org)
    later = T0 + timedelta(seconds=5)
    events: list[RecordEvent] = [
        first,
        second,
        call(first, 1, T0),
        call(first, 2, later),
        call(second, 3, T0),
    ]
    await store.write_records([*events, SessionEnd(second.id, later, "idle")])

    one = await store.get_session(org, first.id, api_key_id=None)
    two = await store.get_session(org, second.id, api_key_id=None)
    assert one is not None and two is not None
    assert (one.call_count, one.last_call_at, one.ended_at) == (2, later, None)
    assert (two.call_count, two.ended_at, two.end_reason) == (1, later, "idle")


async def test_a_task_end_finishes_its_pending_row_once_with_the_duration_to_the_end(
    store: Store,
) -> None:
    org = (await store.ensure_organisation("o")).id
    session = start(org)
    pending = dataclasses.replace(call(session, 1, T0), outcome="task_pending", success=False)
    other = call(session, 2, T0)
    ended = T0 + timedelta(seconds=3)
    end = TaskEnd(pending.id, session.id, "tool_error", '{"isError":true}', False, ended)
    await store.write_records([session, pending, other, end])
    # A second end (another replica, a later poll) changes nothing: the first end seen wins.
    await store.write_records([dataclasses.replace(end, outcome="ok", ended_at=ended + timedelta(seconds=9))])
    # An end for a row that is not a task leaves that row as it was.
    await store.write_records([TaskEnd(other.id, session.id, "cancelled", None, False, ended)])

    rows = {row.id: row for row in (await store.list_invocations(session.id, seek=Seek(), limit=5)).rows}

    finished = rows[pending.id]
    assert (finished.outcome, finished.success, finished.result_json) == (
        "tool_error",
        False,
        '{"isError":true}',
    )
    assert finished.duration_ms == 3000
    assert (rows[other.id].outcome, rows[other.id].result_json) == ("ok", "{}")


async def test_an_invocation_without_a_session_row_fails_its_batch(store: Store) -> None:
    org = (await store.ensure_organisation("o")).id
    known, unknown = start(org), start(org)
    with pytest.raises(StoreError, match="no row"):
        await store.write_records([known, call(known, 1, T0), call(unknown, 2, T0)])
    assert await store.get_session(org, known.id, api_key_id=None) is None


async def test_a_failed_batch_writes_nothing(store: Store) -> None:
    org = (await store.ensure_organisation("o")).id
    orphan = start("no-such-organisation")  # violates the organisations foreign key
    good = start(org)
    with pytest.raises(StoreError):
        await store.write_records([good, call(good, 1, T0), orphan])
    assert await store.get_session(org, good.id, api_key_id=None) is None


async def test_pages_of_equal_timestamps_split_by_row_order_without_loss(store: Store) -> None:
    org = (await store.ensure_organisation("o")).id
    session = start(org)
    # Many calls in the same millisecond: the row number breaks the tie.
    await store.write_records(
        [session, *(call(session, n, T0 + timedelta(milliseconds=n // 4)) for n in range(23))]
    )

    seen: list[str] = []
    seek = Seek()
    pages = 0
    while True:
        page = await store.list_invocations(session.id, seek=seek, limit=5)
        pages += 1
        assert page.more_before == (pages > 1)
        seen += [c.tool_name for c in page.rows]
        if not page.more_after:
            break
        seek = Seek(page.rows[-1].key)
    assert seen == [f"tool-{n}" for n in range(23)] and pages == 5

    back = await store.list_invocations(session.id, seek=Seek(page.rows[0].key, backward=True), limit=5)
    assert [c.tool_name for c in back.rows] == [f"tool-{n}" for n in range(15, 20)]
    assert back.more_before and back.more_after
    again = await store.list_invocations(session.id, seek=Seek(back.rows[0].key, inclusive=True), limit=5)
    assert again.rows == back.rows


async def test_sessions_list_newest_activity_first_and_narrow_to_one_key(store: Store) -> None:
    org = (await store.ensure_organisation("o")).id
    other = (await store.ensure_organisation("p")).id
    mine = [start(org, key="k1", at=T0 + timedelta(seconds=n)) for n in range(3)]
    theirs = start(org, key="k2", at=T0 + timedelta(seconds=10))
    elsewhere = start(other, key="k1", at=T0 + timedelta(seconds=20))
    await store.write_records([*mine, theirs, elsewhere, call(mine[0], 1, T0 + timedelta(seconds=30))])

    everyone = await store.list_sessions(org, api_key_id=None, seek=Seek(), limit=10)
    assert [s.id for s in everyone.rows] == [mine[0].id, theirs.id, mine[2].id, mine[1].id]
    only_k1 = await store.list_sessions(org, api_key_id="k1", seek=Seek(), limit=10)
    assert [s.id for s in only_k1.rows] == [mine[0].id, mine[2].id, mine[1].id]
    assert await store.get_session(org, theirs.id, api_key_id="k1") is None
    assert await store.get_session(other, mine[0].id, api_key_id=None) is None
    every_org = await store.list_sessions(None, api_key_id=None, seek=Seek(), limit=10)
    assert len(every_org.rows) == 5


async def test_sessions_narrow_to_one_client_alone_or_with_a_key(store: Store) -> None:
    org = (await store.ensure_organisation("o")).id
    claude = [start(org, key="k1", at=T0 + timedelta(seconds=n), client="Claude Code") for n in range(3)]
    cursor = start(org, key="k1", at=T0 + timedelta(seconds=5), client="Cursor")
    other_key = start(org, key="k2", at=T0 + timedelta(seconds=6), client="Claude Code")
    await store.write_records([*claude, cursor, other_key])

    by_client = await store.list_sessions(
        org, api_key_id=None, client_name="Claude Code", seek=Seek(), limit=2
    )
    assert [s.id for s in by_client.rows] == [other_key.id, claude[2].id] and by_client.more_after
    rest = await store.list_sessions(
        org, api_key_id=None, client_name="Claude Code", seek=Seek(by_client.rows[-1].key), limit=2
    )
    assert [s.id for s in rest.rows] == [claude[1].id, claude[0].id] and not rest.more_after
    both = await store.list_sessions(org, api_key_id="k2", client_name="Claude Code", seek=Seek(), limit=5)
    assert [s.id for s in both.rows] == [other_key.id]
    assert (
        await store.list_sessions(org, api_key_id="k2", client_name="Cursor", seek=Seek(), limit=5)
    ).rows == ()


async def test_a_session_is_found_by_the_mcp_session_id_its_host_used(store: Store) -> None:
    org = (await store.ensure_organisation("o")).id
    other = (await store.ensure_organisation("p")).id
    first, elsewhere = start(org, key="k1"), start(other, key="k2", at=T0 + timedelta(seconds=5))
    await store.write_records([first, elsewhere])
    found = await store.find_session(elsewhere.mcp_session_id)
    assert found is not None and (found.id, found.organisation_id) == (elsewhere.id, other)
    assert await store.find_session(first.id) is None  # the record id is not an Mcp-Session-Id
    assert await store.find_session("no-such-session") is None


async def test_retention_drops_old_sessions_with_their_calls_and_caps_the_row_count(
    store: Store,
) -> None:
    org = (await store.ensure_organisation("o")).id
    old, live = start(org, at=T0 - timedelta(days=40)), start(org, at=T0 - timedelta(days=40))
    events: list[RecordEvent] = [old, live, call(old, 0, T0 - timedelta(days=40))]
    events += [call(live, 1, T0 - timedelta(days=35))]
    events += [call(live, n, T0 - timedelta(minutes=60 - n)) for n in range(2, 12)]
    await store.write_records(events)

    deleted = await store.prune_records(older_than=T0 - timedelta(days=30), max_invocations=None)
    assert deleted == 2  # the old session (its call goes with it) and the live session's old call
    assert await store.get_session(org, old.id, api_key_id=None) is None
    left = await store.list_invocations(live.id, seek=Seek(), limit=50)
    assert [c.tool_name for c in left.rows] == [f"tool-{n}" for n in range(2, 12)]

    assert await store.prune_records(older_than=None, max_invocations=4) == 6
    left = await store.list_invocations(live.id, seek=Seek(), limit=50)
    assert [c.tool_name for c in left.rows] == [f"tool-{n}" for n in range(8, 12)]


async def test_the_gateway_secret_is_made_once_and_kept(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as first:
        made = await first.gateway_secret("cursor")
        assert len(made) == 32 and await first.gateway_secret("cursor") == made
        assert await first.gateway_secret("other") != made
    async with open_sqlite_store(db_path) as reopened:
        assert await reopened.gateway_secret("cursor") == made


async def test_every_listing_query_is_an_index_range_scan(db_path: Path, sqlite_store: SqliteStore) -> None:
    store = sqlite_store  # the SQLite backend's own file and connections
    org = (await store.ensure_organisation("o")).id
    session = start(org, key="k")
    await store.write_records([session, *(call(session, n, T0) for n in range(5))])
    # Capture the statements the store really runs (with their values), then ask SQLite how
    # it runs each one.
    statements: list[str] = []
    await store._conn.set_trace_callback(statements.append)
    first = await store.list_sessions(org, api_key_id=None, seek=Seek(), limit=1)
    await store.list_sessions(org, api_key_id="k", seek=Seek(first.rows[0].key, backward=True), limit=1)
    await store.list_sessions(org, api_key_id=None, client_name="host", seek=Seek(first.rows[0].key), limit=1)
    await store.list_sessions(org, api_key_id="k", client_name="host", seek=Seek(), limit=1)
    calls = await store.list_invocations(session.id, seek=Seek(), limit=2)
    await store.list_invocations(session.id, seek=Seek(calls.rows[-1].key), limit=2)
    await store._conn.set_trace_callback(None)  # type: ignore[arg-type]  # None turns it off
    selects = [sql for sql in statements if sql.startswith("SELECT")]
    assert len(selects) >= 6
    with closing(sqlite3.connect(db_path)) as db:
        for sql in selects:
            plan = " ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql))
            assert "INDEX" in plan and "TEMP B-TREE" not in plan and "SCAN" not in plan, (sql, plan)


async def test_a_cancelled_write_still_commits_whole_and_the_writer_goes_on(store: Store) -> None:
    org = (await store.ensure_organisation("o")).id
    session = start(org)
    with anyio.CancelScope() as scope:
        scope.cancel()  # cancelled before the writer thread even reports back
        await store.write_records([session, *(call(session, n, T0) for n in range(50))])
    await store.write_records([call(session, 50, T0)])  # the writer thread is still serving

    page = await store.list_invocations(session.id, seek=Seek(), limit=100)
    assert len(page.rows) == 51


async def test_a_write_waits_for_another_connections_lock_without_holding_up_the_gateway(
    db_path: Path, sqlite_store: SqliteStore
) -> None:
    store = sqlite_store  # the SQLite backend's own file and connections
    org = (await store.ensure_organisation("o")).id
    session = start(org)
    written = anyio.Event()

    async def write() -> None:
        await store.write_records([session, call(session, 1, T0)])
        written.set()

    with closing(sqlite3.connect(db_path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # e.g. `mcpgw keys create` while the gateway serves
        async with anyio.create_task_group() as tg:
            started = anyio.current_time()
            tg.start_soon(write)
            with anyio.fail_after(5):
                await anyio.wait_all_tasks_blocked()
            # A write that waited for the lock on the event loop's thread would have held up
            # everything else for the busy timeout (5 s).
            assert anyio.current_time() - started < 1
            assert not written.is_set()
            other.execute("COMMIT")
            with anyio.fail_after(5):
                await written.wait()

    page = await store.list_invocations(session.id, seek=Seek(), limit=10)
    assert [r.tool_name for r in page.rows] == ["tool-1"]


async def test_recording_call_after_call_keeps_the_write_ahead_log_small(
    db_path: Path, sqlite_store: SqliteStore
) -> None:
    store = sqlite_store  # the SQLite backend's own file and connections
    org = (await store.ensure_organisation("o")).id
    session = start(org)
    await store.write_records([session])
    for n in range(5 * CHECKPOINT_EVERY):  # one commit per call, as with one host at a time
        await store.write_records([call(session, n, T0)])

    # Checkpointed as it goes, the log is rewritten from its start (about 5 MB here);
    # without, it would hold every page of every commit (about 25 MB).
    wal = db_path.with_name(db_path.name + "-wal")
    assert wal.stat().st_size < 10 * 2**20
    page = await store.list_invocations(session.id, seek=Seek(), limit=1)
    assert page.rows
