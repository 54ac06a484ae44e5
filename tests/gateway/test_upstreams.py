"""Upstream lifecycles: crashes, forgotten sessions, timeouts, reaping, isolation, name collisions."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from gateway.core.host_session import HostSession
from gateway.core.stateless_group import StatelessGroup
from gateway.upstream.http import HttpChannel
from gateway.upstream.stdio import StdioChannel
from tests.harness import RunningGateway, demo_stdio_yaml, keyless_config, serve_gateway
from tests.upstreams import catalogue_server, serve_mcp

TIMEOUT = 20.0


def text_of(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


@pytest.fixture(scope="module")
async def fragile(
    tmp_path_factory: pytest.TempPathFactory, demo_http_url: str
) -> AsyncIterator[RunningGateway]:
    """Short call timeouts and idle limits, so lifecycles play out within a test."""
    upstreams = (
        demo_stdio_yaml(extra="    timeouts: {call_s: 1}")
        + f"""
  - {{name: web, transport: http, url: '{demo_http_url}'}}
  - {{name: sleepy, transport: stdio, command: [python, -m, gateway.demo], idle_s: 0.000001,
     sessions: per_host}}"""
    )
    config = keyless_config(tmp_path_factory.mktemp("fragile"), upstreams)
    async with serve_gateway(config) as running:
        yield running


def newest_session(gateway: RunningGateway) -> HostSession:
    """The session a test's client just opened (tests in a module run one at a time)."""
    return gateway.gateway.registry.sessions()[-1]


def stdio_channel(session: HostSession, upstream: str) -> StdioChannel:
    opened = session.upstream_session(upstream)
    assert opened is not None and isinstance(opened.channel, StdioChannel)
    return opened.channel


async def test_a_slow_upstream_times_out_with_its_own_error(fragile: RunningGateway) -> None:
    async with Client(fragile.url, mode="legacy") as client:
        with anyio.fail_after(TIMEOUT), pytest.raises(MCPError) as caught:
            await client.call_tool("demo__wait", {"seconds": 5})
        assert caught.value.error.code == -32002
        assert "no answer within 1s" in caught.value.error.message
        with anyio.fail_after(TIMEOUT):  # the session survives its upstream's slowness
            assert text_of(await client.call_tool("demo__echo", {"text": "still here"})) == "still here"


async def test_a_crash_mid_call_is_reported_as_gone_and_the_next_call_restarts_it(
    fragile: RunningGateway,
) -> None:
    async with Client(fragile.url, mode="legacy") as client:
        with anyio.fail_after(TIMEOUT):
            await client.call_tool("demo__echo", {"text": "warm up"})
        first = stdio_channel(newest_session(fragile), "demo")
        with anyio.fail_after(TIMEOUT), pytest.raises(MCPError) as caught:
            await client.call_tool("demo__crash", {})
        assert caught.value.error.code == -32001
        assert "exited before answering" in caught.value.error.message
        with anyio.fail_after(TIMEOUT):
            await first.exited.wait()
            result = await client.call_tool("demo__echo", {"text": "back"})
        assert text_of(result) == "back"
        assert stdio_channel(newest_session(fragile), "demo").pid != first.pid


async def test_an_upstream_that_forgot_the_session_is_reinitialised_once(
    fragile: RunningGateway, demo_http_url: str
) -> None:
    async with Client(fragile.url, mode="legacy") as client:
        with anyio.fail_after(TIMEOUT):
            await client.call_tool("web__echo", {"text": "first"})
        session = newest_session(fragile)
        opened = session.upstream_session("web")
        assert opened is not None and isinstance(opened.channel, HttpChannel)
        forgotten = opened.channel.session_id
        assert forgotten is not None
        async with httpx2.AsyncClient() as http:  # the upstream ends our session, as a restart would
            response = await http.delete(demo_http_url, headers={"mcp-session-id": forgotten})
        assert response.status_code == 200
        with anyio.fail_after(TIMEOUT):
            result = await client.call_tool("web__echo", {"text": "after"})
        assert text_of(result) == "after"
        reopened = session.upstream_session("web")
        assert reopened is not None and isinstance(reopened.channel, HttpChannel)
        assert reopened.channel.session_id not in (None, forgotten)


async def test_two_host_sessions_never_share_an_upstream_session(fragile: RunningGateway) -> None:
    async with Client(fragile.url, mode="legacy") as first, Client(fragile.url, mode="legacy") as second:
        with anyio.fail_after(TIMEOUT):
            await first.call_tool("demo__echo", {"text": "a"})
            await first.call_tool("web__echo", {"text": "a"})
            await second.call_tool("demo__echo", {"text": "b"})
            await second.call_tool("web__echo", {"text": "b"})
        one, two = fragile.gateway.registry.sessions()[-2:]
        assert stdio_channel(one, "demo").pid != stdio_channel(two, "demo").pid
        web_one, web_two = one.upstream_session("web"), two.upstream_session("web")
        assert web_one is not None and web_two is not None
        assert isinstance(web_one.channel, HttpChannel) and isinstance(web_two.channel, HttpChannel)
        assert web_one.channel.session_id != web_two.channel.session_id


async def test_idle_upstream_sessions_are_reaped_with_their_child(fragile: RunningGateway) -> None:
    async with Client(fragile.url, mode="legacy") as client:
        with anyio.fail_after(TIMEOUT):
            await client.call_tool("sleepy__echo", {"text": "once"})
        session = newest_session(fragile)
        child = stdio_channel(session, "sleepy")
        await fragile.gateway.registry.reap()  # the reaper's periodic sweep, run now
        assert session.upstream_session("sleepy") is None
        with anyio.fail_after(TIMEOUT):
            await child.exited.wait()
            assert text_of(await client.call_tool("sleepy__echo", {"text": "again"})) == "again"


async def test_deleting_the_host_session_ends_its_children(fragile: RunningGateway) -> None:
    async with Client(fragile.url, mode="legacy") as client:
        with anyio.fail_after(TIMEOUT):
            await client.call_tool("demo__echo", {"text": "x"})
        child = stdio_channel(newest_session(fragile), "demo")
    with anyio.fail_after(TIMEOUT):
        await child.exited.wait()


@pytest.fixture(scope="module")
async def colliding(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    """Two unprefixed upstreams that both offer `search`."""
    async with serve_mcp(catalogue_server("books")) as books, serve_mcp(catalogue_server("films")) as films:
        upstreams = f"""
  - {{name: books, transport: http, url: "{books}", prefix: ""}}
  - {{name: films, transport: http, url: "{films}", prefix: ""}}"""
        config = keyless_config(tmp_path_factory.mktemp("colliding"), upstreams)
        async with serve_gateway(config) as running:
            yield running


async def test_unprefixed_upstreams_expose_their_own_names(colliding: RunningGateway) -> None:
    async with Client(colliding.url, mode="legacy") as client:
        with anyio.fail_after(TIMEOUT):
            names = {tool.name for tool in (await client.list_tools()).tools}
            result = await client.call_tool("films_only", {})
    assert {"books_only", "films_only"} <= names
    assert text_of(result) == "only films"


async def test_a_name_two_upstreams_claim_is_refused_naming_both(colliding: RunningGateway) -> None:
    async with Client(colliding.url, mode="legacy") as client:
        with anyio.fail_after(TIMEOUT):
            names = {tool.name for tool in (await client.list_tools()).tools}
            with pytest.raises(MCPError) as caught:
                await client.call_tool("search", {"query": "dune"})
    assert "search" not in names
    assert "'books'" in caught.value.error.message and "'films'" in caught.value.error.message


async def test_a_2026_host_reaches_a_2026_upstream_without_an_upstream_session(
    fragile: RunningGateway,
) -> None:
    async with Client(fragile.url, mode="2026-07-28") as client:
        with anyio.fail_after(TIMEOUT):
            counted = await client.call_tool("web__count_slowly", {"steps": 2})  # carries Mcp-Param-Steps
    assert text_of(counted) == "counted 2"
    group = [s for s in fragile.gateway.registry.sessions() if isinstance(s, StatelessGroup)][-1]
    assert group.upstream_session("web") is None  # passed through statelessly, no initialize upstream


async def test_a_name_two_upstreams_claim_is_logged_once_not_at_every_listing(
    colliding: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(3):
        async with Client(colliding.url, mode="legacy") as client:
            with anyio.fail_after(TIMEOUT):
                await client.list_tools()
    told = [
        r for r in caplog.records if "is offered by both" in r.getMessage() and "'search'" in r.getMessage()
    ]
    assert len(told) <= 1  # once for the gateway's life (the module's earlier tests may have seen it)
