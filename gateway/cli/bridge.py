"""`mcpgw stdio --url URL`: lets a stdio-only host (e.g. Claude Desktop) use a gateway URL.

The host starts `mcpgw stdio` as its MCP server; this process relays every message between the
host's stdin/stdout and the gateway's Streamable HTTP endpoint, using the SDK's own stdio and
HTTP transports so both sides speak the protocol exactly as the SDK does. The API key comes
from `MCPGW_API_KEY`, never from the command line (where other users of the machine see it).
"""

from __future__ import annotations

import logging

import anyio
import httpx2
from mcp.client.streamable_http import streamable_http_client
from mcp.server.stdio import stdio_server

logger = logging.getLogger(__name__)


async def run_bridge(url: str, api_key: str | None) -> int:
    headers = {"x-api-key": api_key} if api_key else {}
    timeout = httpx2.Timeout(connect=10.0, read=None, write=30.0, pool=10.0)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as client,
        streamable_http_client(url, http_client=client) as (from_gateway, to_gateway),
        stdio_server() as (from_host, to_host),
        anyio.create_task_group() as tg,
    ):

        async def host_to_gateway() -> None:
            async for item in from_host:
                if isinstance(item, Exception):
                    logger.warning("bridge: unreadable message from the host: %s", item)
                    continue
                await to_gateway.send(item)
            tg.cancel_scope.cancel()  # the host closed stdin: we are done

        async def gateway_to_host() -> None:
            async for item in from_gateway:
                if isinstance(item, Exception):
                    logger.warning("bridge: %s", item)
                    continue
                await to_host.send(item)

        tg.start_soon(host_to_gateway)
        tg.start_soon(gateway_to_host)
    return 0
