"""A host's call has one deadline, its upstream's `timeouts.call_s`, from the moment the gateway
takes it to its answer: a retry after the upstream forgot the session, the re-initialisation
before it, and every round of a bridged call spend the same budget, rather than each starting
a fresh one (a bridged call could otherwise run 16 rounds of `call_s`).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.protocol.jsonrpc import UPSTREAM_TIMEOUT
from tests.harness import RunningGateway, keyless_config, serve_asgi, serve_gateway
from tests.upstreams import asking_server, serve_modern_only

TIMEOUT = 20.0
CALL_S = 1.0
WORK_S = 0.6  # what each attempt of the slow tool (or each answer of the slow host) takes


class _RestartsDuringFirstCall:
    """In front of a real server: the first `tools/call` runs, but its answer is lost and the
    session with it (HTTP 404 for the session, as a restarted server answers), so the gateway
    opens a new session and sends the call again. A filter, because no installed server can be
    restarted in the middle of a call."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.restarted = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or self.restarted:
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        if json.loads(body).get("method") != "tools/call":
            await self.app(scope, replay, send)
            return
        self.restarted = True

        async def lost(message: Message) -> None:
            return None

        await self.app(scope, replay, lost)
        await PlainTextResponse("Session not found", 404)(scope, receive, send)


def slow_server() -> MCPServer:
    server: MCPServer = MCPServer("slow")

    @server.tool(description="Takes a while.", structured_output=False)
    async def work() -> str:
        await anyio.sleep(WORK_S)  # the tool's own work: the pace under test, not synchronisation
        return "done"

    return server


@pytest.fixture
async def restarting(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    async with serve_asgi(_RestartsDuringFirstCall(slow_server().streamable_http_app())) as base:
        upstream = f"\n  - {{name: slow, transport: http, url: '{base}/mcp', timeouts: {{call_s: {CALL_S}}}}}"
        async with serve_gateway(keyless_config(tmp_path, upstream)) as running:
            yield running


async def test_a_call_retried_after_the_upstream_forgot_its_session_ends_at_the_first_deadline(
    restarting: RunningGateway,
) -> None:
    # Two attempts of 0.6 s: each within call_s, the two together not.
    async with Client(restarting.url, mode="legacy", cache=None) as client:
        started = time.monotonic()
        with anyio.fail_after(TIMEOUT), pytest.raises(MCPError) as failed:
            await client.call_tool("slow__work", {})
        elapsed = time.monotonic() - started
        assert failed.value.error.code == UPSTREAM_TIMEOUT
        assert elapsed < 2 * WORK_S  # it did not wait for the second attempt's answer
        with anyio.fail_after(TIMEOUT):  # the session is still good for the next call
            again = await client.call_tool("slow__work", {})
    assert not again.is_error


@pytest.fixture
async def bridged(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    async with serve_modern_only(asking_server()) as url:
        upstream = f"\n  - {{name: ask, transport: http, url: '{url}', timeouts: {{call_s: {CALL_S}}}}}"
        async with serve_gateway(keyless_config(tmp_path, upstream)) as running:
            yield running


def slow_host(url: str) -> Client:
    """A handshake-era host that takes WORK_S to answer each question (a person typing)."""

    async def on_elicit(
        context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        await anyio.sleep(WORK_S)  # the host's pace is the fault under test
        return types.ElicitResult(action="accept", content={"name": "Grace"})

    async def on_sample(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        await anyio.sleep(WORK_S)
        text = types.TextContent(type="text", text="old pond")
        return types.CreateMessageResult(role="assistant", content=text, model="test-model")

    async def on_roots(context: ClientRequestContext) -> types.ListRootsResult:
        await anyio.sleep(WORK_S)
        return types.ListRootsResult.model_validate({"roots": [{"uri": "file:///work/project"}]})

    return Client(
        url,
        mode="legacy",
        elicitation_callback=on_elicit,
        sampling_callback=on_sample,
        list_roots_callback=on_roots,
        cache=None,
    )


async def test_a_bridged_call_whose_questions_together_outlast_the_deadline_times_out(
    bridged: RunningGateway,
) -> None:
    # Three questions of 0.6 s each: every one within call_s, the call not.
    async with slow_host(bridged.url) as client:
        started = time.monotonic()
        with anyio.fail_after(TIMEOUT), pytest.raises(MCPError) as failed:
            await client.call_tool("ask__all_three", {})
        elapsed = time.monotonic() - started
        assert failed.value.error.code == UPSTREAM_TIMEOUT
        assert elapsed < 3 * WORK_S
        with anyio.fail_after(TIMEOUT):  # one question fits: that call is answered
            one = await client.call_tool("ask__greet_user", {})
    assert one.model_dump(mode="json")["content"][0]["text"] == "Hello, Grace!"
