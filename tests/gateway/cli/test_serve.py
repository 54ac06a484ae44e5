"""`mcpgw serve` stopping as a user stops it: Ctrl+C while hosts hold streams open."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import orjson
from mcp_types import CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, PROTOCOL_VERSION_META_KEY

from gateway.app import SHUTDOWN_GRACE_S
from tests.gateway.cli.commands import TIMEOUT, Served, copy_example, free_port, recorded_sessions, serving

STOPPED_WITHIN_S = 10.0
MODERN = "2026-07-28"
REQUEST_CANCELLED = -32800
ACCEPT = {"accept": "application/json, text/event-stream"}


def initialize(client: str, request_id: int = 1) -> dict[str, Any]:
    params = {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": client, "version": "1"},
    }
    return {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": params}


def long_call(request_id: int) -> dict[str, Any]:
    """A call that reports progress for longer than the gateway waits for calls when it stops."""
    params = {"name": "demo__count_slowly", "arguments": {"steps": 1000}, "_meta": {"progressToken": 7}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


async def events(response: httpx2.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON-RPC messages of an SSE response (the legacy `endpoint` event as {"endpoint": …})."""
    async for event in httpx2.EventSource(response):
        if event.event == "endpoint":
            yield {"endpoint": event.data}
        elif event.data:
            yield orjson.loads(event.data)


async def open_stream(
    stack: AsyncExitStack, http: httpx2.AsyncClient, method: str, url: str, **kwargs: Any
) -> AsyncIterator[dict[str, Any]]:
    response = await stack.enter_async_context(http.stream(method, url, **kwargs))
    assert response.status_code == 200, await response.aread()
    return events(response)


@asynccontextmanager
async def gateway_and_host(
    tmp_path: Path,
) -> AsyncIterator[tuple[Served, httpx2.AsyncClient, AsyncExitStack]]:
    """The example config served, and a host's HTTP client whose streams stay open until the end."""
    async with (
        serving(copy_example(tmp_path), free_port()) as served,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
        AsyncExitStack() as stack,
    ):
        yield served, http, stack


async def call_in_flight(
    stack: AsyncExitStack, http: httpx2.AsyncClient, url: str, client: str
) -> tuple[dict[str, str], AsyncIterator[dict[str, Any]]]:
    """A handshake-era session of `client`'s (the headers its requests carry), with a call in
    flight: its progress streams until the gateway ends it."""
    opened = await http.post(url, json=initialize(client), headers=ACCEPT)
    session = {**ACCEPT, "mcp-session-id": opened.headers["mcp-session-id"]}
    in_flight = await open_stream(stack, http, "POST", url, json=long_call(2), headers=session)
    assert (await anext(in_flight))["method"] == "notifications/progress"
    return session, in_flight


async def test_ctrl_c_closes_every_open_stream_at_once_and_records_each_session_ended_by_shutdown(
    tmp_path: Path,
) -> None:
    async with gateway_and_host(tmp_path) as (served, http, stack):
        with anyio.fail_after(TIMEOUT):
            # A handshake-era session with a call in flight, and its GET stream open.
            session, in_flight = await call_in_flight(stack, http, served.url, "get-stream-host")
            get_stream = await open_stream(
                stack, http, "GET", served.url, headers={**session, "accept": "text/event-stream"}
            )

            # A legacy HTTP+SSE connection with its session initialised.
            legacy = await open_stream(stack, http, "GET", f"{served.base_url}/sse")
            endpoint = (await anext(legacy))["endpoint"]
            posted = await http.post(f"{served.base_url}{endpoint}", json=initialize("legacy-host"))
            assert posted.status_code == 202
            assert (await anext(legacy))["id"] == 1

            # A 2026-07-28 listen stream, acknowledged.
            meta = {
                PROTOCOL_VERSION_META_KEY: MODERN,
                CLIENT_CAPABILITIES_META_KEY: {},
                CLIENT_INFO_META_KEY: {"name": "listen-host", "version": "1"},
            }
            listen_request = {
                "jsonrpc": "2.0",
                "id": 3,
                "method": "subscriptions/listen",
                "params": {"notifications": {"toolsListChanged": True}, "_meta": meta},
            }
            modern = {**ACCEPT, "mcp-protocol-version": MODERN, "mcp-method": "subscriptions/listen"}
            listen = await open_stream(stack, http, "POST", served.url, json=listen_request, headers=modern)
            assert (await anext(listen))["method"] == "notifications/subscriptions/acknowledged"

        served.child.process.send_signal(signal.SIGINT)
        with anyio.fail_after(STOPPED_WITHIN_S):
            code = await served.child.process.wait()

        # Each stream ended as an HTTP response ends, not with a connection cut mid-body.
        with anyio.fail_after(TIMEOUT):
            assert [message async for message in get_stream] == []
            rest_of_call = [message async for message in in_flight]
            assert [message async for message in legacy] == []
            rest_of_listen = [message async for message in listen]

    assert code == 0, served.child.log
    assert "Traceback" not in served.child.log, served.child.log
    # The call the gateway could not finish is answered (cancelled), and so is the listen request:
    # 2026-07-28 ends a listen stream deliberately with its result, naming the subscription.
    assert rest_of_call[-1]["id"] == 2 and rest_of_call[-1]["error"]["code"] == REQUEST_CANCELLED
    assert rest_of_listen[-1]["id"] == 3 and "result" in rest_of_listen[-1]

    sessions = {s.client_name: s for s in await recorded_sessions(tmp_path / "mcpgw.db")}
    assert set(sessions) == {"get-stream-host", "legacy-host", "listen-host"}
    assert {name: s.end_reason for name, s in sessions.items()} == dict.fromkeys(sessions, "shutdown")


async def test_a_second_ctrl_c_cancels_the_call_in_flight_at_once_and_still_records_its_session_ended(
    tmp_path: Path,
) -> None:
    async with gateway_and_host(tmp_path) as (served, http, stack):
        with anyio.fail_after(TIMEOUT):
            _, in_flight = await call_in_flight(stack, http, served.url, "impatient-host")
            served.child.process.send_signal(signal.SIGINT)
            await served.child.logged(b"Shutting down")
        served.child.process.send_signal(signal.SIGINT)
        # At once: well before the grace calls in flight get after the first Ctrl+C is over.
        with anyio.fail_after(SHUTDOWN_GRACE_S):
            code = await served.child.process.wait()
        with anyio.fail_after(TIMEOUT):
            rest_of_call = [message async for message in in_flight]

    assert code == 0, served.child.log
    assert "Traceback" not in served.child.log, served.child.log
    assert rest_of_call[-1]["id"] == 2 and rest_of_call[-1]["error"]["code"] == REQUEST_CANCELLED
    [recorded] = await recorded_sessions(tmp_path / "mcpgw.db")
    assert (recorded.client_name, recorded.end_reason, recorded.call_count) == (
        "impatient-host",
        "shutdown",
        1,
    )
