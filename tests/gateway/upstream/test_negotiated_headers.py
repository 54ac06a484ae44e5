"""An upstream that answers the gateway's `initialize` with 2026-07-28 gets, on every later POST,
the headers that revision requires (`Mcp-Method`, and `Mcp-Name` for a named call), not only the
version header.

The upstream is a small JSON-RPC app of the test's own: no installed server negotiates 2026-07-28
from within an `initialize` (the conformance suite's scenario servers do), so the behaviour under
test cannot be produced otherwise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.api.conftest import McpClient
from tests.harness import RunningGateway, keyless_config, serve_asgi, serve_gateway

TIMEOUT = 20.0
TOOL = {"name": "echo", "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}}


class Negotiating:
    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []  # the headers of every POST after initialize
        self.initialize_method: str | None = None

    async def mcp(self, request: Request) -> Response:
        message: dict[str, Any] = await request.json()
        method = message.get("method")
        if method == "initialize":
            self.initialize_method = request.headers.get("mcp-method")
            result: dict[str, Any] = {
                "protocolVersion": "2026-07-28",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "negotiating", "version": "1"},
            }
            return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "result": result})
        self.seen.append({k.lower(): v for k, v in request.headers.items()})
        if "id" not in message:
            return Response(status_code=202)
        if method == "server/discover":
            error = {"code": -32601, "message": "Method not found"}
            return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "error": error})
        if method == "tools/list":
            return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "result": {"tools": [TOOL]}})
        text = message.get("params", {}).get("arguments", {}).get("text", "")
        answer = {"content": [{"type": "text", "text": text}]}
        return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "result": answer})


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Negotiating, RunningGateway]]:
    upstream = Negotiating()
    app = Starlette(routes=[Route("/mcp", upstream.mcp, methods=["POST"])])
    async with serve_asgi(app) as base:
        body = f"\n  - {{name: up, transport: http, url: '{base}/mcp', prefix: ''}}"
        async with serve_gateway(keyless_config(tmp_path, body)) as gateway:
            yield upstream, gateway


async def test_calls_after_a_2026_initialize_carry_the_method_and_name_headers(
    world: tuple[Negotiating, RunningGateway],
) -> None:
    upstream, gateway = world
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        client = McpClient(http, gateway.url, "")
        with anyio.fail_after(TIMEOUT):
            session = await client.open()
            answer = await client.call(session, "echo", {"text": "hi"})
    assert answer["result"]["content"][0]["text"] == "hi"
    # Sent before the revision is known: harmless to a server of an older one, required by 2026-07-28.
    assert upstream.initialize_method == "initialize"
    calls = [h for h in upstream.seen if h.get("mcp-method") == "tools/call"]
    assert calls and calls[-1]["mcp-name"] == "echo"
    assert all(h.get("mcp-method") for h in upstream.seen if h.get("mcp-protocol-version") == "2026-07-28")
