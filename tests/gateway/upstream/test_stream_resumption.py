"""A response stream that a handshake-era upstream closes before it answers (SEP-1699: it MAY,
once it has sent an event id) is resumed as the transport says: the gateway waits the `retry`
the upstream sent, then GETs the endpoint with `Last-Event-ID`, and the answer the upstream
replays there reaches the host. Before, the host got -32001 ("the response stream ended before
the response").

The upstream is a real SDK server with an event store, its tool closing its own stream
(`Context.close_sse_stream`); a filter in front of it records the GETs it is sent."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
from mcp import Client
from mcp_types import TextContent
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.harness import keyless_config, serve_asgi, serve_gateway
from tests.upstreams import resuming_server

TIMEOUT = 20.0
RETRY_MS = 400
EARLY_TOLERANCE_S = 0.05  # the suite's `sse-retry` tolerance


class _GetLog:
    """Each GET's arrival (monotonic time) and headers, then the request goes on to the server."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.gets: list[tuple[float, dict[str, str]]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            self.gets.append((time.monotonic(), headers))
        await self.app(scope, receive, send)


async def test_a_stream_closed_before_the_answer_is_resumed_after_the_retry_with_last_event_id(
    tmp_path: Path,
) -> None:
    _server, app, closed = resuming_server(RETRY_MS)
    log = _GetLog(app)
    async with serve_asgi(log) as base:
        upstream = f"\n  - {{name: resuming, transport: http, url: '{base}/mcp', prefix: ''}}"
        async with (
            serve_gateway(keyless_config(tmp_path, upstream)) as gateway,
            Client(gateway.url, mode="legacy", cache=None) as client,
        ):
            with anyio.fail_after(TIMEOUT):
                result = await client.call_tool("interrupted", {})
    assert not result.is_error, result
    assert isinstance(result.content[0], TextContent)
    assert result.content[0].text == "finished after the stream was resumed"
    resumed = [(at, headers) for at, headers in log.gets if "last-event-id" in headers]
    assert len(resumed) == 1, log.gets
    (at, headers), (closed_at,) = resumed[0], closed
    assert headers["last-event-id"]  # the id of the closed stream's priming event
    assert headers["accept"] == "text/event-stream"
    assert headers["mcp-session-id"]
    assert at - closed_at >= RETRY_MS / 1000 - EARLY_TOLERANCE_S, "reconnected before the upstream's retry"
