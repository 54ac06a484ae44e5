"""Small in-process SDK servers for tests that need an upstream with particular names.

They are real `MCPServer`s served over Streamable HTTP by uvicorn in the test process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from mcp.server.mcpserver import Context, MCPServer
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.harness import serve_asgi


def catalogue_server(name: str) -> MCPServer:
    """A server with a `search` tool (names collide across instances) and a tool of its own."""
    server: MCPServer = MCPServer(name)

    @server.tool(description="Search this catalogue.", structured_output=False)
    def search(query: str) -> str:
        return f"{name} found {query}"

    @server.tool(name=f"{name}_only", description="A tool only this server has.", structured_output=False)
    def only() -> str:
        return f"only {name}"

    return server


@asynccontextmanager
async def serve_mcp(server: MCPServer) -> AsyncIterator[str]:
    """Serve `server` over Streamable HTTP on an ephemeral port; yield its /mcp URL."""
    async with serve_asgi(server.streamable_http_app()) as base_url:
        yield f"{base_url}/mcp"


class _RequireKey:
    """Refuse (401) any request whose `X-Api-Key` is not one of `owners`, as an API-key MCP server does."""

    def __init__(self, app: ASGIApp, owners: Mapping[str, str]) -> None:
        self.app = app
        self.owners = owners
        self.seen: list[dict[str, str]] = []  # every request's headers, to check what reached us

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            self.seen.append(headers)
            if headers.get("x-api-key") not in self.owners:
                await PlainTextResponse("bad key", 401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


@dataclass
class KeyedUpstream:
    url: str
    seen: list[dict[str, str]]


@asynccontextmanager
async def serve_keyed_upstream(owners: Mapping[str, str]) -> AsyncIterator[KeyedUpstream]:
    """An MCP server that needs `X-Api-Key` (key -> owner); its `whoami` tool names the owner."""
    server: MCPServer = MCPServer("keyed")

    @server.tool(description="Whose API key this request carries.", structured_output=False)
    def whoami(ctx: Context) -> str:
        request = ctx.request_context.request
        assert isinstance(request, Request)
        return owners[request.headers["x-api-key"]]

    guarded = _RequireKey(server.streamable_http_app(), owners)
    async with serve_asgi(guarded) as base_url:
        yield KeyedUpstream(f"{base_url}/mcp", guarded.seen)
