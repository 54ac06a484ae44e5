"""A host sees what an upstream lists for a client with that host's capabilities.

`@modelcontextprotocol/server-everything` (from npm, over stdio) registers its sampling,
elicitation and roots tools only on a session whose client declared those capabilities. Through
the gateway, each host must see the tools a client connected directly and declaring the same
would see, and calling one of them must reach the host that declared it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.client.stdio import StdioServerParameters, stdio_client

from gateway.upstream.profiles import MAX_PROFILES
from tests.harness import RunningGateway, demo_stdio_yaml, keyless_config, serve_gateway
from tests.node import NODE_DIR

EVERYTHING = NODE_DIR / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
TIMEOUT = 30.0
MODES = ["legacy", "2026-07-28"]
UPSTREAMS = ["every", "pooled"]  # sessions: per_host, shared
CAPABLE_ONLY = {"trigger-sampling-request", "trigger-elicitation-request", "get-roots-list"}


@pytest.fixture(scope="module")
async def everything_gateway(
    node_modules: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    upstreams = f"""
  - name: every
    transport: stdio
    command: [node, "{EVERYTHING}", stdio]
    sessions: per_host
  - name: pooled
    transport: stdio
    command: [node, "{EVERYTHING}", stdio]
    sessions: shared"""
    async with serve_gateway(keyless_config(tmp_path_factory.mktemp("everything"), upstreams)) as running:
        yield running


async def _on_sample(
    context: ClientRequestContext, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    text = types.TextContent(type="text", text="sampled by the host")
    return types.CreateMessageResult(role="assistant", content=text, model="host-model")


async def _on_elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="decline")


async def _on_roots(context: ClientRequestContext) -> types.ListRootsResult:
    return types.ListRootsResult.model_validate(
        {"roots": [{"uri": "file:///work/project", "name": "project"}]}
    )


def _client(target: object, *, capable: bool, mode: str = "legacy", name: str | None = None) -> Client:
    return Client(
        target,  # type: ignore[arg-type]
        mode=mode,
        sampling_callback=_on_sample if capable else None,
        elicitation_callback=_on_elicit if capable else None,
        list_roots_callback=_on_roots if capable else None,
        cache=None,
        # 2026-07-28 requests are grouped by client name and version: each kind of host its own.
        client_info=types.Implementation(name=name or ("capable" if capable else "bare"), version="1"),
    )


async def _direct_tools(*, capable: bool) -> set[str]:
    params = StdioServerParameters(command="node", args=[str(EVERYTHING), "stdio"], cwd=str(Path.cwd()))
    async with _client(stdio_client(params), capable=capable) as client:
        with anyio.fail_after(TIMEOUT):
            return {tool.name for tool in (await client.list_tools()).tools}


async def _gateway_tools(
    gateway: RunningGateway, *, capable: bool, mode: str, name: str | None = None, upstream: str = "every"
) -> set[str]:
    async with _client(gateway.url, capable=capable, mode=mode, name=name) as client:
        with anyio.fail_after(TIMEOUT):
            tools = (await client.list_tools()).tools
    prefix = f"{upstream}__"
    return {tool.name.removeprefix(prefix) for tool in tools if tool.name.startswith(prefix)}


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("capable", [True, False], ids=["capable", "bare"])
async def test_a_host_sees_the_tools_a_direct_client_with_its_capabilities_sees(
    everything_gateway: RunningGateway, capable: bool, mode: str, upstream: str
) -> None:
    direct = await _direct_tools(capable=capable)
    assert (direct >= CAPABLE_ONLY) is capable  # the server really lists per capability
    seen = await _gateway_tools(everything_gateway, capable=capable, mode=mode, upstream=upstream)
    assert seen == direct


async def test_a_capable_host_and_a_bare_one_each_see_their_own_list(
    everything_gateway: RunningGateway,
) -> None:
    """The lists are kept per capability set: whichever lists first, the other is not served it."""
    capable = await _gateway_tools(everything_gateway, capable=True, mode="legacy")
    bare = await _gateway_tools(everything_gateway, capable=False, mode="legacy")
    again = await _gateway_tools(everything_gateway, capable=True, mode="legacy")
    assert CAPABLE_ONLY <= capable == again
    assert not CAPABLE_ONLY & bare


async def test_a_2026_host_is_served_the_list_of_the_capabilities_its_request_declares(
    everything_gateway: RunningGateway,
) -> None:
    """2026-07-28 hosts declare capabilities per request: the same client name and version with
    other capabilities is served the list of those, not of the first request's."""
    capable = await _gateway_tools(everything_gateway, capable=True, mode="2026-07-28", name="same")
    bare = await _gateway_tools(everything_gateway, capable=False, mode="2026-07-28", name="same")
    assert capable >= CAPABLE_ONLY
    assert not CAPABLE_ONLY & bare


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("mode", MODES)
async def test_sampling_through_the_gateway_reaches_the_host_that_declared_it(
    everything_gateway: RunningGateway, upstream: str, mode: str
) -> None:
    async with _client(everything_gateway.url, capable=True, mode=mode) as client:
        with anyio.fail_after(TIMEOUT):
            result = await client.call_tool(
                f"{upstream}__trigger-sampling-request", {"prompt": "say something", "maxTokens": 20}
            )
    assert not result.is_error
    text = " ".join(item.text for item in result.content if isinstance(item, types.TextContent))
    assert "sampled by the host" in text


@pytest.fixture(scope="module")
async def demo_gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    async with serve_gateway(
        keyless_config(tmp_path_factory.mktemp("profiles"), demo_stdio_yaml())
    ) as running:
        yield running


async def _modern_tools(
    http: httpx2.AsyncClient, gateway: RunningGateway, capabilities: dict[str, Any]
) -> set[str]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": capabilities,
        "io.modelcontextprotocol/clientInfo": {"name": "many", "version": "1"},
    }
    headers = {
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/list",
    }
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}}
    with anyio.fail_after(TIMEOUT):
        answer = await http.post(gateway.url, json=message, headers=headers)
    assert answer.status_code == 200, answer.text
    return {tool["name"] for tool in answer.json()["result"]["tools"]}


async def test_hosts_cannot_make_the_gateway_list_an_upstream_for_unboundedly_many_capability_sets(
    demo_gateway: RunningGateway,
) -> None:
    """Each capability set is a listing session (a child, for stdio) and a list held: past
    MAX_PROFILES per upstream, and for keys outside the spec's, nothing new is listed."""
    kinds = ["roots", "sampling", "elicitation", "tasks"]
    sets: list[dict[str, Any]] = [
        {kind: {} for kind, bit in zip(kinds, f"{n:04b}", strict=True) if bit == "1"} for n in range(1, 16)
    ]
    lists = demo_gateway.gateway.lists
    async with httpx2.AsyncClient() as http:
        bare = await _modern_tools(http, demo_gateway, {})
        before = lists.fetched["demo"]
        for n in range(20):  # experimental and extension keys are not part of a capability set
            extras: dict[str, Any] = {"experimental": {f"x{n}": {}}, "extensions": {f"io.example/{n}": {}}}
            assert await _modern_tools(http, demo_gateway, extras) == bare
        assert lists.fetched["demo"] == before
        for capabilities in sets:
            assert await _modern_tools(http, demo_gateway, capabilities) == bare
        assert lists.fetched["demo"] == before + MAX_PROFILES
        for capabilities in sets:  # listed once: served from the catalogue
            await _modern_tools(http, demo_gateway, capabilities)
        assert lists.fetched["demo"] == before + MAX_PROFILES
