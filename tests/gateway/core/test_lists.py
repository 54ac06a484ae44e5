"""The shared catalogue: what upstreams list is fetched once for every host session, so listing
starts no child per host session, and it is listed again when the upstream says it changed or
its TTL is over. Real stdio children (the demo and the third-party `mcp-server-time`), counted
through /proc."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx2
import pytest

from tests.api.conftest import McpClient
from tests.harness import RunningGateway, demo_stdio_yaml, keyless_config, serve_gateway
from tests.processes import children

TIMEOUT = 30.0
TIME_SERVER = """
  - name: time
    transport: stdio
    command: [python, -m, mcp_server_time, --local-timezone, UTC]
    cwd: ."""


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as client:
        yield client


@pytest.fixture
async def listing(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    upstreams = demo_stdio_yaml(cwd=".") + TIME_SERVER
    async with serve_gateway(keyless_config(tmp_path, upstreams)) as running:
        yield running


def names(answer: dict[str, object]) -> set[str]:
    result = answer["result"]
    assert isinstance(result, dict), answer
    return {tool["name"] for tool in result["tools"]}


async def test_many_host_sessions_listing_tools_start_one_child_per_upstream_not_one_each(
    listing: RunningGateway, http: httpx2.AsyncClient, tmp_path: Path
) -> None:
    client = McpClient(http, listing.url, "")
    with anyio.fail_after(TIMEOUT):
        sessions = [await client.open() for _ in range(4)]
        answers = [await client.request(session, "tools/list", {}) for session in sessions]
    for answer in answers:
        assert {"demo__echo", "time__get_current_time"} <= names(answer)
    # The catalogue's own listing session, one per upstream, whatever the number of hosts.
    assert len(children("gateway.demo", tmp_path)) == 1
    assert len(children("mcp_server_time", tmp_path)) == 1
    assert listing.gateway.lists.fetched == {"demo": 1, "time": 1}


async def test_a_call_in_per_host_mode_starts_the_callers_own_child_but_listing_does_not(
    listing: RunningGateway, http: httpx2.AsyncClient, tmp_path: Path
) -> None:
    client = McpClient(http, listing.url, "")
    with anyio.fail_after(TIMEOUT):
        session = await client.open()
        await client.request(session, "tools/list", {})
        before = len(children("gateway.demo", tmp_path))
        answer = await client.call(session, "demo__echo", {"text": "mine"})
    assert answer["result"]["content"][0]["text"] == "mine"
    assert len(children("gateway.demo", tmp_path)) == before + 1  # demo runs per_host: the caller's own


async def test_a_list_changed_from_a_shared_upstream_reaches_every_sessions_next_listing(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    config = keyless_config(
        tmp_path, demo_stdio_yaml(cwd=".", sessions="shared", extra="    max_sessions: 1")
    )
    async with serve_gateway(config) as running:
        client = McpClient(http, running.url, "")
        with anyio.fail_after(TIMEOUT):
            first, second = await client.open(), await client.open()
            assert "demo__fresh" not in names(await client.request(second, "tools/list", {}))
            await client.call(first, "demo__add_tool", {"name": "fresh"})
            assert "demo__fresh" in names(await client.request(second, "tools/list", {}))
        assert running.gateway.lists.fetched["demo"] == 2


async def test_a_list_past_its_ttl_is_listed_again(tmp_path: Path, http: httpx2.AsyncClient) -> None:
    config = keyless_config(tmp_path, TIME_SERVER + "\n    list_ttl_s: 0.000001")
    async with serve_gateway(config) as running:
        client = McpClient(http, running.url, "")
        with anyio.fail_after(TIMEOUT):
            session = await client.open()
            for _ in range(3):
                assert "time__get_current_time" in names(await client.request(session, "tools/list", {}))
        assert running.gateway.lists.fetched["time"] == 3
        assert len(children("mcp_server_time", tmp_path)) == 1
