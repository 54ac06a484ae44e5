"""2026-07-28 `subscriptions/listen` streams cannot starve anyone: each one to an HTTP upstream
takes a slot on that upstream's listen pool, never a connection its calls need, and one key
holds at most `sessions.max_listen_streams_per_key` of them (past it, a clear error at once).

The pools are configured small (2 connections for calls, 2 listen streams) so that tens of
streams, not hundreds, show what a flood would do.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, cast

import anyio
import httpx2
import orjson
import pytest

from tests.gateway.host.test_stateless import envelope, routing_headers
from tests.harness import RunningGateway, serve_gateway, write_config

TIMEOUT = 20.0
PER_KEY = 6


@pytest.fixture
async def gateway(tmp_path: Path, demo_http_url: str) -> AsyncIterator[RunningGateway]:
    config = write_config(
        tmp_path,
        f"""
database: ./gw.db
auth: {{required: true}}
sessions: {{max_listen_streams_per_key: {PER_KEY}}}
upstreams:
  - name: web
    transport: http
    url: {demo_http_url}
    timeouts: {{connect_s: 2, call_s: 5}}
    max_connections: 2
    max_listen_streams: 2
""",
    )
    async with serve_gateway(config) as running:
        yield running


async def key_of(gateway: RunningGateway, organisation: str) -> str:
    store = gateway.gateway.store
    org = await store.ensure_organisation(organisation)
    return (await store.create_api_key(org.id)).secret


async def open_listen(stack: AsyncExitStack, http: httpx2.AsyncClient, url: str, key: str, n: int) -> Any:
    """Open one listen stream; the first event it carries (the acknowledgement, or an error)."""
    message = {**envelope("subscriptions/listen", {"notifications": {"toolsListChanged": True}}), "id": n}
    headers = {**routing_headers(message), "x-api-key": key}
    response = await stack.enter_async_context(
        http.stream("POST", url, content=orjson.dumps(message), headers=headers)
    )
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        return orjson.loads(await response.aread())
    lines = cast(AsyncGenerator[str, None], response.aiter_lines())
    stack.push_async_callback(lines.aclose)  # kept until the stack ends: dropping it closes the stream
    async for line in lines:
        if line.startswith("data:"):
            return orjson.loads(line[5:])
    raise AssertionError("the stream ended without an event")


async def test_listen_streams_never_take_the_connections_another_organisations_calls_need(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    listener, caller = await key_of(gateway, "listens"), await key_of(gateway, "calls")
    call = envelope("tools/call", {"name": "web__echo", "arguments": {"text": "still here"}})
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http, AsyncExitStack() as stack:
        with anyio.fail_after(TIMEOUT):
            for n in range(PER_KEY):  # three times the listen pool, and more than the calls pool
                first = await open_listen(stack, http, gateway.url, listener, n)
                assert first.get("method") == "notifications/subscriptions/acknowledged", first
            for _ in range(4):  # more calls than the calls' pool has connections, one after another
                answer = await http.post(
                    gateway.url, json=call, headers={**routing_headers(call), "x-api-key": caller}
                )
                assert answer.status_code == 200, answer.text
                assert answer.json()["result"]["content"][0]["text"] == "still here", answer.text
            ready = await http.get(f"{gateway.base_url}/readyz")
    assert ready.json()["upstreams"]["web"]["state"] == "up", ready.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_key_past_its_listen_stream_cap_is_told_so_at_once(gateway: RunningGateway) -> None:
    key = await key_of(gateway, "greedy")
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http, AsyncExitStack() as stack:
        with anyio.fail_after(TIMEOUT):
            for n in range(PER_KEY):
                first = await open_listen(stack, http, gateway.url, key, n)
                assert first.get("method") == "notifications/subscriptions/acknowledged", first
            refused = await open_listen(stack, http, gateway.url, key, PER_KEY)
            assert "max_listen_streams_per_key" in refused["error"]["message"], refused
            assert f"{PER_KEY} listen streams" in refused["error"]["message"], refused
            # Another key is not affected.
            other = await open_listen(stack, http, gateway.url, await key_of(gateway, "modest"), 0)
            assert other.get("method") == "notifications/subscriptions/acknowledged", other
