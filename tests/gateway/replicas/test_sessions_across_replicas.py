"""A session-based session on replicas: any replica serves it, a replica killed or stopped costs
the host nothing, its end (deleted, idle) happens once for all of them."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx2
import orjson

from store import Seek, open_postgres_store
from tests.harness import demo_stdio_yaml, gateway_process, serve_gateway
from tests.replicas import replica_configs, serve_replicas

TIMEOUT = 60
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def configs(tmp_path: Path, postgres_url: str, replicas: int = 2) -> list[Path]:
    return replica_configs(
        tmp_path, postgres_url, demo_stdio_yaml(), replicas=replicas, extra_yaml="auth: {required: false}\n"
    )


def call(n: int) -> dict[str, Any]:
    params = {"name": "demo__echo", "arguments": {"text": f"hi {n}"}}
    return {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": params}


async def open_session(http: httpx2.AsyncClient, url: str) -> dict[str, str]:
    """Initialize through `url`; the headers of the session's next requests."""
    params = {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "rr", "version": "1"},
    }
    opened = await http.post(url, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params},
                             headers=ACCEPT)  # fmt: skip
    assert opened.status_code == 200, opened.text
    headers = {
        **ACCEPT,
        "mcp-session-id": opened.headers["mcp-session-id"],
        "mcp-protocol-version": "2025-11-25",
    }
    initialized = await http.post(
        url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
    )
    assert initialized.status_code == 202, initialized.text
    return headers


async def echoed(http: httpx2.AsyncClient, url: str, headers: dict[str, str], n: int) -> httpx2.Response:
    reply = await http.post(url, json=call(n), headers=headers)
    if reply.status_code == 200:
        assert reply.json()["result"]["content"][0]["text"] == f"hi {n}", reply.text
    return reply


async def recorded(database_url: str) -> list[tuple[int, str | None]]:
    """Each recorded session's call count and end reason."""
    async with open_postgres_store(database_url) as store:
        page = await store.list_sessions(None, api_key_id=None, seek=Seek(), limit=50)
    return [(row.call_count, row.end_reason) for row in page.rows]


async def test_a_session_goes_on_after_the_replica_that_minted_it_is_killed(
    tmp_path: Path, postgres_url: str
) -> None:
    first, second = configs(tmp_path, postgres_url)
    async with (
        gateway_process(first) as doomed,
        serve_gateway(second) as survivor,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
    ):
        with anyio.fail_after(TIMEOUT):
            session = await open_session(http, doomed.url)
            assert (await echoed(http, doomed.url, session, 1)).status_code == 200
            assert (await echoed(http, survivor.url, session, 2)).status_code == 200
            os.kill(doomed.process.pid, signal.SIGKILL)
            await doomed.process.wait()
            for n in range(3, 6):  # no new initialize: the host goes on with the session it had
                assert (await echoed(http, survivor.url, session, n)).status_code == 200
    # Stopping the survivor ends nothing either: the session is left for an idle round to end.
    assert await recorded(postgres_url) == [(5, None)]


async def test_a_session_the_host_deletes_through_one_replica_is_refused_by_the_other(
    tmp_path: Path, postgres_url: str
) -> None:
    async with (
        serve_replicas(configs(tmp_path, postgres_url)) as (a, b),
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
    ):
        with anyio.fail_after(TIMEOUT):
            session = await open_session(http, a.url)
            assert (await echoed(http, b.url, session, 1)).status_code == 200  # b holds a copy now
            copy = b.gateway.registry.held(session["mcp-session-id"])
            assert copy is not None
            assert (await http.delete(a.url, headers=session)).status_code == 200
            await copy.ended.wait()  # b dropped its copy: a's SessionEnded came over NOTIFY
            for replica in (a, b):
                refused = await echoed(http, replica.url, session, 2)
                assert refused.status_code == 404, refused.text
    assert await recorded(postgres_url) == [(1, "deleted")]


async def test_a_replica_stopping_or_starting_ends_no_session_another_one_serves(
    tmp_path: Path, postgres_url: str
) -> None:
    first, second = configs(tmp_path, postgres_url)
    async with serve_gateway(second) as staying, httpx2.AsyncClient(timeout=TIMEOUT) as http:
        with anyio.fail_after(TIMEOUT):
            async with serve_gateway(first) as leaving:
                session = await open_session(http, leaving.url)
                assert (await echoed(http, leaving.url, session, 1)).status_code == 200
            # A rolling restart: the replica stopped (its copy dropped), then started again.
            assert (await echoed(http, staying.url, session, 2)).status_code == 200
            async with serve_gateway(first) as back:
                assert (await echoed(http, back.url, session, 3)).status_code == 200
                assert (await echoed(http, staying.url, session, 4)).status_code == 200
            assert await recorded(postgres_url) == [(4, None)]


async def test_a_session_idle_on_every_replica_is_ended_once_and_not_while_one_serves_it(
    tmp_path: Path, postgres_url: str
) -> None:
    async with (
        serve_replicas(configs(tmp_path, postgres_url)) as (a, b),
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
    ):
        with anyio.fail_after(TIMEOUT):
            session = await open_session(http, a.url)
            assert (await echoed(http, b.url, session, 1)).status_code == 200
            session_id = session["mcp-session-id"]
            idle_s = a.gateway.config.sessions.idle_s

            async def age_everywhere() -> None:
                """As if `idle_s` had passed since both replicas last saw it (instead of waiting
                five minutes): their copies' clocks and the row's last_seen_at set back."""
                for replica in (a, b):
                    held = replica.gateway.registry.held(session_id)
                    if held is not None:
                        held.last_activity -= idle_s + 60
                ms = int((idle_s + 60) * 1000)
                connection = await asyncpg.connect(postgres_url)
                try:
                    await connection.execute(
                        "UPDATE live_sessions SET last_seen_at = last_seen_at - $1 WHERE mcp_session_id = $2",
                        ms,
                        session_id,
                    )
                finally:
                    await connection.close()

            await age_everywhere()
            assert (await echoed(http, b.url, session, 2)).status_code == 200  # b sees it again
            await b.gateway.registry.reap()  # b's round: it writes that it saw the session
            await a.gateway.registry.reap()  # a's copy is idle here, the session is not
            assert a.gateway.registry.held(session_id) is None
            assert (await echoed(http, a.url, session, 3)).status_code == 200  # a serves it again

            await age_everywhere()
            async with anyio.create_task_group() as tg:  # both replicas' rounds at once
                tg.start_soon(a.gateway.registry.reap)
                tg.start_soon(b.gateway.registry.reap)
            for replica in (a, b):
                assert replica.gateway.registry.held(session_id) is None
                assert (await echoed(http, replica.url, session, 4)).status_code == 404
    assert await recorded(postgres_url) == [(3, "idle")]


async def first_message(
    http: httpx2.AsyncClient, url: str, headers: dict[str, str], method: str, told: anyio.Event | None = None
) -> None:
    """Hold a GET stream for the session through `url` until a message of `method` comes on it;
    with `told`, set it then and hold the stream on until the replica goes away."""
    try:
        async with http.stream("GET", url, headers={**headers, "accept": "text/event-stream"}) as stream:
            assert stream.status_code == 200, await stream.aread()
            async for line in stream.aiter_lines():
                if line.startswith("data: ") and orjson.loads(line[6:]).get("method") == method:
                    if told is None:
                        return
                    told.set()
    except httpx2.TransportError:
        if told is None:
            raise
        return  # the replica was killed under the stream
    raise AssertionError(f"the stream through {url} ended before a {method}")


async def replicas_live(http: httpx2.AsyncClient, base_url: str) -> float:
    metrics = (await http.get(f"{base_url}/metrics")).text
    [line] = [line for line in metrics.splitlines() if line.startswith("mcpgw_replicas_live ")]
    return float(line.split()[1])


async def test_what_a_session_is_told_while_its_streams_replica_is_killed_waits_for_its_next_stream(
    tmp_path: Path, postgres_url: str
) -> None:
    """A killed replica sends no word that its GET stream closed: once its heartbeat lapses the
    others stop sending it the session's messages and keep them for the host's next stream."""
    first, second = configs(tmp_path, postgres_url)
    changed = "notifications/tools/list_changed"
    async with (
        serve_gateway(first) as keeper,
        gateway_process(second) as doomed,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
    ):
        with anyio.fail_after(TIMEOUT):
            # Polling what the keeper reports (it checks every 5 s), not a guess at its timing.
            while await replicas_live(http, keeper.base_url) != 2:  # noqa: ASYNC110
                await anyio.sleep(0.2)
            session = await open_session(http, keeper.url)
            add = {"name": "demo__add_tool", "arguments": {"name": "before"}}
            told = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(first_message, http, doomed.url, session, changed, told)
                # The keeper's stdio child says its list changed: the keeper sends that to the
                # stream on the other replica (once it has heard of it: it asks where it is).
                added = await http.post(keeper.url, json={**call(1), "params": add}, headers=session)
                assert added.status_code == 200, added.text
                await told.wait()
                os.kill(doomed.process.pid, signal.SIGKILL)  # its stream open: no word of it closing
                await doomed.process.wait()
            while await replicas_live(http, keeper.base_url) != 1:  # noqa: ASYNC110 (a 6 s lapse)
                await anyio.sleep(0.2)

            add = {"name": "demo__add_tool", "arguments": {"name": "meanwhile"}}
            added = await http.post(keeper.url, json={**call(2), "params": add}, headers=session)
            assert added.status_code == 200, added.text
            await first_message(http, keeper.url, session, changed)  # kept for the next stream
