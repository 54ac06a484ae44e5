"""A 2026-07-28 upstream that refuses the gateway's first `server/discover` with -32022
(unsupported protocol version) and names the versions it serves is asked again with one of them
the gateway speaks (SEP-2575), not taken for a server of the handshake era.

The refusal comes from a filter in front of a real server: no installed server refuses a version
it serves, and a version the gateway does not speak would leave nothing to retry with."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
from mcp import Client
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.harness import keyless_config, serve_asgi, serve_gateway
from tests.upstreams import ModernOnly, Recording, catalogue_server

TIMEOUT = 20.0


class _RefusesFirstVersion:
    """Answers the first `server/discover` as a server that serves none of what it was asked for
    would; everything else reaches the server."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.refused = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or self.refused:
            await self.app(scope, receive, send)
            return
        message: Message = await receive()
        request = json.loads(message.get("body", b"{}"))
        if request.get("method") != "server/discover":
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return message

            await self.app(scope, replay, send)
            return
        self.refused = True
        data = {"supported": ["2026-07-28"], "requested": "2026-07-28"}
        error = {"code": -32022, "message": "Unsupported protocol version", "data": data}
        body = {"jsonrpc": "2.0", "id": request.get("id"), "error": error}
        await JSONResponse(body, 400)(scope, receive, send)


async def test_a_discover_refused_with_unsupported_version_is_asked_again_in_a_supported_one(
    tmp_path: Path,
) -> None:
    recording = Recording(_RefusesFirstVersion(ModernOnly(catalogue_server("cat").streamable_http_app())))
    async with serve_asgi(recording) as base:
        upstream = f"\n  - {{name: cat, transport: http, url: '{base}/mcp', prefix: ''}}"
        async with (
            serve_gateway(keyless_config(tmp_path, upstream)) as gateway,
            Client(gateway.url, mode="legacy", cache=None) as client,
        ):
            with anyio.fail_after(TIMEOUT):
                listed = {tool.name for tool in (await client.list_tools()).tools}
    assert listed == {"search", "cat_only"}
    discovers = [m for m in recording.posted if m.get("method") == "server/discover"]
    assert len(discovers) == 2 and discovers[0]["id"] != discovers[1]["id"]
    for discover in discovers:
        meta = discover["params"]["_meta"]  # type: ignore[index]
        assert meta["io.modelcontextprotocol/protocolVersion"] == "2026-07-28"
        assert meta["io.modelcontextprotocol/clientInfo"]["name"] == "mcpgw"  # a SHOULD of SEP-2575
