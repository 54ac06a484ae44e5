"""A tool's input schema reaches the host as its upstream declared it: the JSON Schema 2020-12
keywords (`$schema`, `$defs` with an `$anchor`, `allOf`/`anyOf`, `if`/`then`/`else`,
`additionalProperties`) are neither dropped nor rewritten, whichever revision the upstream
speaks (SEP-1613, SEP-2106)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer

from tests.harness import keyless_config, serve_gateway
from tests.upstreams import RICH_SCHEMA, rich_schema_server, serve_mcp, serve_modern_only

TIMEOUT = 20.0
Serve = Callable[[MCPServer], AbstractAsyncContextManager[str]]


@pytest.mark.parametrize("serve", [serve_mcp, serve_modern_only], ids=["both-revisions", "2026-only"])
@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_a_2020_12_input_schema_reaches_the_host_unchanged(
    tmp_path: Path, serve: Serve, mode: str
) -> None:
    async with serve(rich_schema_server()) as url:
        upstream = f"\n  - {{name: rich, transport: http, url: '{url}', prefix: ''}}"
        async with (
            serve_gateway(keyless_config(tmp_path, upstream)) as gateway,
            Client(gateway.url, mode=mode, cache=None) as client,
        ):
            with anyio.fail_after(TIMEOUT):
                listed = (await client.list_tools()).tools
    (tool,) = [tool for tool in listed if tool.name == "contact"]
    assert tool.input_schema == RICH_SCHEMA
