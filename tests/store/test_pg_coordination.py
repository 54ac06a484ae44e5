"""Two stores on one PostgreSQL database reach each other as two replicas would: each has its own
pool and LISTEN connection, so what passes between them goes through the server."""

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from typing import Any

import anyio
import asyncpg
import pytest

from store import PostgresStore, open_postgres_store
from store._pg_coordination import INLINE_BYTES
from store.postgres import REVOCATION_CONFIRM_S


@pytest.fixture
async def pair(postgres_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(open_postgres_store(postgres_url))
        second = await stack.enter_async_context(open_postgres_store(postgres_url))
        yield first, second


async def test_what_one_publishes_the_other_receives_in_order_small_and_large(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = (store.coordination for store in pair)
    assert a.shared and b.shared and a.instance_id != b.instance_id
    received: list[Mapping[str, Any]] = []
    done = anyio.Event()

    async def heard(payload: Mapping[str, Any]) -> None:
        received.append(payload)
        if payload["n"] == 3:
            done.set()

    b.subscribe("session:1", heard)
    large = "x" * (2 * INLINE_BYTES)  # over NOTIFY's limit: through the table
    await a.publish("session:1", {"n": 1})
    await a.publish("session:1", {"n": 2, "text": large})
    await a.publish("session:other", {"n": 99})
    await a.publish("session:1", {"n": 3, "nested": {"ok": [1, 2]}})
    with anyio.fail_after(10):
        await done.wait()
    assert [p["n"] for p in received] == [1, 2, 3]
    assert received[1]["text"] == large
    assert received[2]["nested"] == {"ok": [1, 2]}


async def test_the_publisher_hears_its_own_message_once(pair: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = (store.coordination for store in pair)
    own: list[int] = []
    theirs = anyio.Event()

    async def mine(payload: Mapping[str, Any]) -> None:
        own.append(payload["n"])

    async def witness(payload: Mapping[str, Any]) -> None:
        if payload["n"] == 2:
            theirs.set()

    a.subscribe("t", mine)
    b.subscribe("t", witness)
    await a.publish("t", {"n": 1})
    await a.publish("t", {"n": 2})
    with anyio.fail_after(10):
        await theirs.wait()  # by now a has heard its own notices back too (same server, same order)
    await a.publish("t", {"n": 3})
    assert own == [1, 2, 3]


Pair = tuple[PostgresStore, PostgresStore]


async def test_a_lease_is_held_by_one_replica_until_it_lapses(pair: Pair) -> None:
    a, b = (store.coordination for store in pair)
    assert await a.hold_lease("maintenance", 30)
    assert not await b.hold_lease("maintenance", 30)
    assert await a.hold_lease("maintenance", 0)  # renewed by its holder, lapsing at once
    assert await b.hold_lease("maintenance", 30)  # the server's clock has moved on: lapsed
    assert not await a.hold_lease("maintenance", 30)


async def test_an_exclusive_section_excludes_the_other_replica(pair: Pair) -> None:
    a, b = (store.coordination for store in pair)
    inside_a = anyio.Event()
    release_a = anyio.Event()
    order: list[str] = []

    async def first() -> None:
        async with a.exclusive("refresh:cred-1"):
            order.append("a in")
            inside_a.set()
            await release_a.wait()
            order.append("a out")

    async def second() -> None:
        await inside_a.wait()
        async with b.exclusive("refresh:cred-1"):
            order.append("b in")

    async def other_name() -> None:
        await inside_a.wait()
        async with b.exclusive("refresh:cred-2"):  # another name is not held up
            order.append("b other")
        release_a.set()

    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            tg.start_soon(second)
            tg.start_soon(other_name)
    assert order == ["a in", "b other", "a out", "b in"]


async def test_each_replica_sees_the_other_live_until_it_stops(postgres_url: str) -> None:
    async with open_postgres_store(postgres_url) as a:
        async with open_postgres_store(postgres_url) as b:
            both = {a.coordination.instance_id, b.coordination.instance_id}
            assert await a.coordination.live_instances() == both
            gone = b.coordination.instance_id
        assert gone not in await a.coordination.live_instances()


async def test_a_revocation_returns_once_the_other_replica_has_dropped_its_cached_keys(pair: Pair) -> None:
    """Strict revocation: once `revoke_api_key` (or a grant's revocation) has returned on one
    replica, the other's key generation has moved, so its next request reads the key again."""
    a, b = pair
    org = await a.ensure_organisation("default")
    key = await a.create_api_key(org.id)
    before = b.key_generation()

    await a.revoke_api_key(key.key.id)

    assert b.key_generation() != before


async def test_a_revocation_waits_a_bounded_time_for_a_replica_that_beats_but_does_not_answer(
    pair: Pair, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica killed a moment ago still has a fresh heartbeat row: the revocation does not
    wait for it forever, and the log names it."""
    a, _ = pair
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(
            "INSERT INTO cluster_instances (id, started_at, seen_at) VALUES ('silent01', now(), now())"
        )
    finally:
        await conn.close()
    org = await a.ensure_organisation("default")
    key = await a.create_api_key(org.id)

    with anyio.fail_after(REVOCATION_CONFIRM_S + 5):
        await a.revoke_api_key(key.key.id)

    assert "silent01" in caplog.text and "did not confirm" in caplog.text
