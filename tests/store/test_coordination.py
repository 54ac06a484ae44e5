"""The coordination contract every store keeps for its own process (store/coordination.py).

Across processes (several replicas on one PostgreSQL) it is tested in tests/gateway/replicas.
"""

from collections.abc import Mapping
from typing import Any

import anyio

from store import Store


async def test_a_message_reaches_every_subscriber_of_its_topic_in_order(store: Store) -> None:
    coordination = store.coordination
    seen: list[tuple[str, Any]] = []
    done = anyio.Event()

    async def first(payload: Mapping[str, Any]) -> None:
        seen.append(("first", payload["n"]))

    async def second(payload: Mapping[str, Any]) -> None:
        seen.append(("second", payload["n"]))
        if payload["n"] == 2:
            done.set()

    coordination.subscribe("t", first)
    coordination.subscribe("t", second)
    coordination.subscribe("other", first)
    for n in (1, 2):
        await coordination.publish("t", {"n": n})
    with anyio.fail_after(5):
        await done.wait()
    assert [n for who, n in seen if who == "first"] == [1, 2]
    assert [n for who, n in seen if who == "second"] == [1, 2]


async def test_a_failing_handler_costs_no_other_its_message(store: Store) -> None:
    coordination = store.coordination
    got = anyio.Event()

    async def broken(payload: Mapping[str, Any]) -> None:
        raise RuntimeError("bad handler")

    async def fine(payload: Mapping[str, Any]) -> None:
        got.set()

    coordination.subscribe("t", broken)
    coordination.subscribe("t", fine)
    await coordination.publish("t", {})
    with anyio.fail_after(5):
        await got.wait()


async def test_after_unsubscribing_nothing_more_arrives(store: Store) -> None:
    coordination = store.coordination
    seen: list[int] = []
    last = anyio.Event()

    async def handler(payload: Mapping[str, Any]) -> None:
        seen.append(payload["n"])

    async def witness(payload: Mapping[str, Any]) -> None:
        if payload["n"] == 2:
            last.set()

    unsubscribe = coordination.subscribe("t", handler)
    coordination.subscribe("t", witness)
    await coordination.publish("t", {"n": 1})
    unsubscribe()
    await coordination.publish("t", {"n": 2})
    with anyio.fail_after(5):
        await last.wait()
    assert seen == [1]


async def test_this_process_holds_a_free_lease_and_is_alive(store: Store) -> None:
    coordination = store.coordination
    assert await coordination.hold_lease("maintenance", 5.0)
    assert await coordination.hold_lease("maintenance", 5.0)  # renewed by its holder
    assert coordination.instance_id in await coordination.live_instances()


async def test_exclusive_sections_of_one_name_do_not_overlap(store: Store) -> None:
    coordination = store.coordination
    inside = 0
    most = 0

    async def section() -> None:
        nonlocal inside, most
        async with coordination.exclusive("refresh:x"):
            inside += 1
            most = max(most, inside)
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()
            inside -= 1

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(section)
    assert most == 1
