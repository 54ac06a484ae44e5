"""A host that accepts an upstream's form elicitation without some of its fields: the gateway, the
upstream's client, fills them in with the defaults the requested schema gives (SEP-1034); a field
the host did give is kept, and a declined elicitation gets nothing added."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.server.mcpserver import Context, MCPServer

from tests.harness import keyless_config, serve_gateway
from tests.upstreams import serve_mcp

TIMEOUT = 20.0
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "default": "John Doe"},
        "age": {"type": "integer", "default": 30},
        "status": {"type": "string", "enum": ["active", "inactive"], "default": "active"},
        "verified": {"type": "boolean", "default": True},
        "nickname": {"type": "string"},
    },
}


def form_server() -> MCPServer:
    server: MCPServer = MCPServer("form")

    @server.tool(description="Asks for a form and says what came back.", structured_output=False)
    async def ask(ctx: Context) -> str:
        answer = await ctx.session.elicit_form("Fill this in", SCHEMA, ctx.request_id)
        return json.dumps({"action": answer.action, "content": answer.content})

    return server


@pytest.mark.parametrize(
    ("action", "given", "received"),
    [
        ("accept", {}, {"name": "John Doe", "age": 30, "status": "active", "verified": True}),
        (
            "accept",
            {"name": "Ada", "verified": False},
            {"name": "Ada", "age": 30, "status": "active", "verified": False},
        ),
        ("decline", None, None),
    ],
    ids=["nothing-given", "some-given", "declined"],
)
async def test_omitted_fields_of_an_accepted_form_reach_the_upstream_with_their_defaults(
    tmp_path: Path, action: str, given: dict[str, Any] | None, received: dict[str, Any] | None
) -> None:
    async def on_elicit(
        context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        return types.ElicitResult(action=action, content=given)  # type: ignore[arg-type]

    async with serve_mcp(form_server()) as url:
        upstream = f"\n  - {{name: form, transport: http, url: '{url}', prefix: ''}}"
        async with (
            serve_gateway(keyless_config(tmp_path, upstream)) as gateway,
            Client(gateway.url, mode="legacy", elicitation_callback=on_elicit, cache=None) as client,
        ):
            with anyio.fail_after(TIMEOUT):
                result = await client.call_tool("ask", {})
    text = result.content[0]
    assert isinstance(text, types.TextContent)
    assert json.loads(text.text) == {"action": action, "content": received}
