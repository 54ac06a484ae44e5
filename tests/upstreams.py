"""Small in-process SDK servers for tests that need an upstream with particular names.

They are real `MCPServer`s served over Streamable HTTP by uvicorn in the test process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp.server.mcpserver import MCPServer

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
