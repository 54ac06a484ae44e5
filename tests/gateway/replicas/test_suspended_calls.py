"""A 2026-07-28 call suspended for input on one replica, retried through another.

The demo upstream speaks the handshake era: when it asks the host mid-call (elicitation,
sampling), the gateway answers the host `input_required` and keeps the upstream call waiting on
the replica that runs it. The host's retry lands on the other replica (round robin): it must go
on with that call there, not send the `tools/call` again (which would run it twice: the host
would be asked again, and again, each retry landing where the call is not).
"""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client

from tests.harness import demo_stdio_yaml
from tests.replicas import RoundRobin, replica_configs, serve_replicas

pytestmark = pytest.mark.anyio

TIMEOUT = 30.0
HAIKU = "old pond / a frog jumps in / splash"


@pytest.mark.parametrize("sessions", ["per_host", "shared"])
async def test_elicitation_answered_through_the_other_replica(
    tmp_path: Path, postgres_url: str, sessions: str
) -> None:
    asked: list[types.ElicitRequestParams] = []

    async def elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    configs = replica_configs(
        tmp_path, postgres_url, demo_stdio_yaml(sessions=sessions), extra_yaml="auth: {required: false}\n"
    )
    async with serve_replicas(configs) as replicas:
        transport = RoundRobin([r.base_url for r in replicas])
        async with (
            httpx2.AsyncClient(transport=transport, timeout=TIMEOUT) as http,
            Client(
                streamable_http_client(replicas[0].url, http_client=http),
                mode="2026-07-28",
                elicitation_callback=elicit,
            ) as client,
        ):
            with anyio.fail_after(TIMEOUT):
                result = await client.call_tool("demo__ask_name", {})
        assert not result.is_error, result
        assert [block.text for block in result.content if isinstance(block, types.TextContent)] == [
            "Hello, Ada!"
        ]
        assert len(asked) == 1  # asked once: the call ran once, on the replica that suspended it
        assert len(set(transport.sent[-2:])) == 2  # the call and its retry went to different replicas


async def test_sampling_answered_through_the_other_replica(tmp_path: Path, postgres_url: str) -> None:
    asked: list[types.CreateMessageRequestParams] = []

    async def sample(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        asked.append(params)
        text = types.TextContent(type="text", text=HAIKU)
        return types.CreateMessageResult(role="assistant", content=text, model="test-model")

    configs = replica_configs(
        tmp_path, postgres_url, demo_stdio_yaml(), extra_yaml="auth: {required: false}\n"
    )
    async with serve_replicas(configs) as replicas:
        transport = RoundRobin([r.base_url for r in replicas])
        async with (
            httpx2.AsyncClient(transport=transport, timeout=TIMEOUT) as http,
            Client(
                streamable_http_client(replicas[0].url, http_client=http),
                mode="2026-07-28",
                sampling_callback=sample,
            ) as client,
        ):
            with anyio.fail_after(TIMEOUT):
                result = await client.call_tool("demo__sample_haiku", {"topic": "frogs"})
        assert not result.is_error, result
        assert [block.text for block in result.content if isinstance(block, types.TextContent)] == [HAIKU]
        assert len(asked) == 1
