"""GET (listen) streams to a Streamable HTTP upstream never hold the connections its calls need:
they have a bounded pool of their own, and sessions past it go without one (logged) while their
calls keep working."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPDeprecationWarning

from gateway.upstream.http import HttpChannel
from tests.api.conftest import McpClient
from tests.harness import keyless_config, serve_gateway, start_demo_http, stop_process

TIMEOUT = 30.0
SESSIONS = 8


@pytest.fixture
async def demo_url() -> AsyncIterator[str]:
    proc, url = await start_demo_http()
    try:
        yield url
    finally:
        await stop_process(proc)


async def test_calls_still_answer_when_more_host_sessions_listen_than_the_upstream_has_connections(
    tmp_path: Path, demo_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = keyless_config(
        tmp_path,
        f"""
  - name: web
    transport: http
    url: {demo_url}
    sessions: per_host
    timeouts: {{connect_s: 2, call_s: 10}}
    max_connections: 4
    max_listen_streams: 2
""",
    )
    caplog.set_level(logging.WARNING)
    async with serve_gateway(config) as gateway, httpx2.AsyncClient(timeout=TIMEOUT) as http:
        client = McpClient(http, gateway.url, "")
        with anyio.fail_after(TIMEOUT):
            sessions = [await client.open(name=f"host-{n}") for n in range(SESSIONS)]
            # Each session's first call opens its upstream session, which wants a GET stream.
            for n, session in enumerate(sessions):
                answer = await client.call(session, "web__echo", {"text": f"hello {n}"})
                assert answer.get("result", {}).get("isError") is False, answer
                assert answer["result"]["content"][0]["text"] == f"hello {n}"
            # ... and again, with every upstream session (and its wish to listen) open.
            for n, session in enumerate(sessions):
                answer = await client.call(session, "web__echo", {"text": f"again {n}"})
                assert answer["result"]["content"][0]["text"] == f"again {n}", answer
    assert any("listen streams" in record.getMessage() for record in caplog.records), caplog.text


async def test_a_session_past_the_listen_cap_hears_the_upstream_once_another_sessions_stream_closes(
    tmp_path: Path, demo_url: str
) -> None:
    config = keyless_config(
        tmp_path,
        f"""
  - name: web
    transport: http
    url: {demo_url}
    sessions: per_host
    max_listen_streams: 1
""",
    )
    updated: list[str] = []
    arrived = anyio.Event()

    async def on_message(message: object) -> None:
        if (
            isinstance(message, types.ServerNotification)
            and message.method == "notifications/resources/updated"
        ):
            updated.append(str(message.params.uri))
            arrived.set()

    async with serve_gateway(config) as gateway, httpx2.AsyncClient(timeout=TIMEOUT) as http:
        first = McpClient(http, gateway.url, "")
        with anyio.fail_after(TIMEOUT):
            holder = await first.open(name="holder")
            assert (await first.call(holder, "web__echo", {"text": "x"}))["result"]["isError"] is False
            async with Client(gateway.url, mode="legacy", message_handler=on_message, cache=None) as late:
                with pytest.warns(MCPDeprecationWarning):
                    await late.subscribe_resource("demo://readme")
                (session,) = [s for s in gateway.gateway.registry.sessions() if s.id != holder]
                (upstream,) = session.open_upstreams()
                channel = upstream.channel
                assert isinstance(channel, HttpChannel)
                assert not channel.stream_open.is_set()  # the one slot is the holder's
                ended = await http.delete(gateway.url, headers={"mcp-session-id": holder})
                assert ended.status_code == 200
                await channel.stream_open.wait()
                await late.call_tool("web__touch", {"uri": "demo://readme"})
                await arrived.wait()
    assert updated == ["demo://readme"]
