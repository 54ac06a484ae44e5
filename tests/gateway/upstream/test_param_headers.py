"""2026-07-28 `x-mcp-header`: a call of a tool that declares a property's header carries it
(`Mcp-Param-<token>`, the argument's value), and a tool whose declaration is invalid is left out
of the list hosts are given (the revision says a client must not use it).

The upstream is a real SDK server in 2026-07-28 only; the schemas are set after registration,
because the SDK refuses to register a tool with an invalid declaration."""

from __future__ import annotations

import base64
from pathlib import Path

import anyio
from mcp import Client
from mcp.server.mcpserver import MCPServer

from tests.harness import keyless_config, serve_gateway
from tests.upstreams import serve_recorded_modern_only

TIMEOUT = 20.0


def routed_server() -> MCPServer:
    server: MCPServer = MCPServer("routed")

    @server.tool(description="Runs in a region.", structured_output=False)
    def in_region(region: str, text: str) -> str:
        return f"{region}: {text}"

    @server.tool(description="Runs with options.", structured_output=False)
    def tuned(label: str, verbose: bool | None = None) -> str:
        return f"{label} {verbose}"

    @server.tool(description="Declares a header on an object.", structured_output=False)
    def broken(where: str) -> str:
        return where

    good = server._tool_manager.get_tool("in_region")
    tuned_tool = server._tool_manager.get_tool("tuned")
    bad = server._tool_manager.get_tool("broken")
    assert good is not None and tuned_tool is not None and bad is not None
    good.parameters["properties"]["region"]["x-mcp-header"] = "Region"
    tuned_tool.parameters["properties"]["label"]["x-mcp-header"] = "Label"
    tuned_tool.parameters["properties"]["verbose"] = {"type": "boolean", "x-mcp-header": "Verbose"}
    bad.parameters["properties"]["where"] = {"type": "object", "x-mcp-header": "Where"}
    return server


async def test_declared_param_headers_are_sent_and_invalid_tools_left_out(tmp_path: Path) -> None:
    async with serve_recorded_modern_only(routed_server()) as (url, recording):
        upstream = f"\n  - {{name: routed, transport: http, url: '{url}', prefix: ''}}"
        async with (
            serve_gateway(keyless_config(tmp_path, upstream)) as gateway,
            Client(gateway.url, mode="legacy", cache=None) as client,
        ):
            with anyio.fail_after(TIMEOUT):
                listed = {tool.name for tool in (await client.list_tools()).tools}
                result = await client.call_tool("in_region", {"region": "eu-west", "text": "hi"})
    assert listed == {"in_region", "tuned"}
    assert not result.is_error
    (call,) = [
        h for m, h in zip(recording.posted, recording.headers, strict=True) if m.get("method") == "tools/call"
    ]
    assert call["mcp-param-region"] == "eu-west"


async def test_unsafe_values_go_base64_and_null_ones_not_at_all(tmp_path: Path) -> None:
    """What the suite's `http-custom-headers` checks: a value a header cannot carry as is
    (non-ASCII, edge whitespace, control characters) is sent `=?base64?...?=`; a null one is
    left out (SEP-2243)."""
    async with serve_recorded_modern_only(routed_server()) as (url, recording):
        upstream = f"\n  - {{name: routed, transport: http, url: '{url}', prefix: ''}}"
        async with (
            serve_gateway(keyless_config(tmp_path, upstream)) as gateway,
            Client(gateway.url, mode="legacy", cache=None) as client,
        ):
            with anyio.fail_after(TIMEOUT):
                await client.list_tools()
                first = await client.call_tool("tuned", {"label": " Hello, 世界\n", "verbose": True})
                second = await client.call_tool("tuned", {"label": "plain", "verbose": None})
    assert not first.is_error and not second.is_error
    calls = [
        h for m, h in zip(recording.posted, recording.headers, strict=True) if m.get("method") == "tools/call"
    ]
    assert [(h.get("mcp-param-label"), h.get("mcp-param-verbose")) for h in calls] == [
        ("=?base64?" + base64.b64encode(" Hello, 世界\n".encode()).decode() + "?=", "true"),
        ("plain", None),
    ]
