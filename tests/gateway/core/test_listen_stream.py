"""Where a session's server-initiated messages go: one stream of a session-based session, every
listen stream of a 2026-07-28 group.

Streamable HTTP: the server "MUST send each of its JSON-RPC messages on only one of the connected
streams; that is, it MUST NOT broadcast the same message across multiple streams". A host may
hold GET streams on two replicas (each refuses only a second one of its own), so the rule holds
across replicas too. The replicas here talk through the in-process coordination, the streams
are lists: what is under test is which of them a message reaches.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from gateway.cluster import Cluster, inbox
from gateway.core.listen_stream import ListenStream
from gateway.protocol.jsonrpc import JSONObject
from store.coordination import LocalCoordination

CHANGED: JSONObject = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}


class Stream:
    def __init__(self) -> None:
        self.got: list[JSONObject] = []

    async def send(self, message: JSONObject) -> None:
        self.got.append(message)


@asynccontextmanager
async def replica() -> AsyncIterator[tuple[Cluster, LocalCoordination]]:
    """This replica's cluster end (in a task group of the test's own task: fixtures tear down in
    another)."""
    coordination = LocalCoordination("here")
    async with anyio.create_task_group() as tg:
        cluster = Cluster(coordination, tg)
        try:
            yield cluster, coordination
        finally:
            cluster.close()


async def test_a_session_based_sessions_message_goes_on_one_of_its_streams() -> None:
    listen = ListenStream(buffered=True, one_stream=True)
    first, second = Stream(), Stream()
    await listen.attach(first)
    await listen.attach(second)

    await listen.send(CHANGED)

    assert (first.got, second.got) == ([CHANGED], [])


async def test_a_groups_message_goes_on_every_listen_stream() -> None:
    listen = ListenStream(buffered=False, one_stream=False)
    first, second = Stream(), Stream()
    await listen.attach(first)
    await listen.attach(second)

    await listen.send(CHANGED)

    assert (first.got, second.got) == ([CHANGED], [CHANGED])


async def opened_elsewhere(coordination: LocalCoordination, key: str, *replicas: str) -> dict[str, list[Any]]:
    """`replicas` say they hold a stream for `key`; what each is sent from then on."""
    sent: dict[str, list[Any]] = {replica: [] for replica in replicas}
    for replica in replicas:

        async def record(payload: Any, replica: str = replica) -> None:
            sent[replica].append(payload["message"])

        coordination.subscribe(inbox(replica), record)
        await coordination.publish("mcpgw.all", {"t": "stream_opened", "from": replica, "stream": key})
    return sent


async def test_a_session_based_sessions_message_goes_to_one_replica_holding_a_stream() -> None:
    async with replica() as (here, coordination):
        listen = ListenStream(buffered=True, one_stream=True)
        listen.link = here.link("session-1", listen)
        sent = await opened_elsewhere(coordination, "session-1", "b", "c")

        await listen.send(CHANGED)
        await listen.send(CHANGED)

    assert sorted(len(messages) for messages in sent.values()) == [0, 2]  # one replica, the same one


async def test_with_a_stream_of_its_own_a_replica_sends_a_sessions_message_to_no_other() -> None:
    async with replica() as (here, coordination):
        listen = ListenStream(buffered=True, one_stream=True)
        listen.link = here.link("session-1", listen)
        sent = await opened_elsewhere(coordination, "session-1", "b")
        local = Stream()
        await listen.attach(local)

        await listen.send(CHANGED)

    assert (local.got, sent["b"]) == ([CHANGED], [])


async def test_a_groups_message_goes_to_every_replica_holding_a_listen_stream() -> None:
    async with replica() as (here, coordination):
        listen = ListenStream(buffered=False, one_stream=False)
        listen.link = here.link("group-1", listen)
        sent = await opened_elsewhere(coordination, "group-1", "b", "c")

        await listen.send(CHANGED)

    assert sent == {"b": [CHANGED], "c": [CHANGED]}


async def test_a_replica_that_stopped_beating_is_sent_nothing_and_the_message_is_kept() -> None:
    """`kill -9` leaves no StreamClosed: once its heartbeat lapses the replica is forgotten, and
    the message waits for the host's next stream as on a gateway alone."""
    async with replica() as (here, coordination):
        listen = ListenStream(buffered=True, one_stream=True)
        listen.link = here.link("session-1", listen)
        sent = await opened_elsewhere(coordination, "session-1", "dead")

        await here.check_instances()  # the in-process coordination knows no replica but this one
        await listen.send(CHANGED)
        reopened = Stream()
        await listen.attach(reopened)

    assert (sent["dead"], reopened.got) == ([], [CHANGED])


async def test_a_fan_out_is_written_by_each_replica_itself_never_passed_on() -> None:
    """Every replica hears a fan-out (an upstream's list changed) and tells its own copy of the
    session: the replica without the stream passing its copy on would write it twice."""
    async with replica() as (here, coordination):
        listen = ListenStream(buffered=True, one_stream=True)
        listen.link = here.link("session-1", listen)
        sent = await opened_elsewhere(coordination, "session-1", "b")

        await listen.announce(CHANGED)
        reopened = Stream()  # nor is it kept for a stream here: b's own copy went on b's stream
        await listen.attach(reopened)

    assert (sent["b"], reopened.got) == ([], [])


async def test_a_fan_out_with_no_stream_open_anywhere_waits_for_the_next_one() -> None:
    async with replica() as (here, _):
        listen = ListenStream(buffered=True, one_stream=True)
        listen.link = here.link("session-1", listen)

        await listen.announce(CHANGED)
        opened = Stream()
        await listen.attach(opened)

    assert opened.got == [CHANGED]
