"""One API key holds at most `sessions.max_requests_in_flight_per_key` requests in flight, in
both protocol generations together: one more is refused at once (HTTP 429, a JSON-RPC error
naming the limit), other keys are not affected, and a finished request gives its place back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from tests.gateway.host.test_stateless import envelope, routing_headers
from tests.harness import INITIALIZE, RunningGateway, serve_gateway, write_config

TIMEOUT = 20.0
PER_KEY = 2
ACCEPT = {"accept": "application/json, text/event-stream"}


@pytest.fixture
async def gateway(tmp_path: Path, demo_http_url: str) -> AsyncIterator[RunningGateway]:
    config = write_config(
        tmp_path,
        f"""
database: ./gw.db
auth: {{required: true}}
sessions: {{max_requests_in_flight_per_key: {PER_KEY}}}
upstreams:
  - name: web
    transport: http
    url: {demo_http_url}
""",
    )
    async with serve_gateway(config) as running:
        yield running


async def key_of(gateway: RunningGateway, organisation: str) -> tuple[str, str]:
    store = gateway.gateway.store
    org = await store.ensure_organisation(organisation)
    created = await store.create_api_key(org.id)
    return created.secret, created.key.id


def call(tool: str, arguments: dict[str, Any], n: int) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": n,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }


async def open_session(http: httpx2.AsyncClient, url: str, key: str) -> dict[str, str]:
    with anyio.fail_after(TIMEOUT):
        opened = await http.post(url, json=INITIALIZE, headers={**ACCEPT, "x-api-key": key})
    assert opened.status_code == 200, opened.text
    return {**ACCEPT, "x-api-key": key, "mcp-session-id": opened.headers["mcp-session-id"]}


async def until(predicate: Any) -> None:
    """Poll the gateway's own count: what it holds has no event to wait on from outside."""
    with anyio.fail_after(TIMEOUT):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def test_a_key_past_its_cap_of_requests_in_flight_is_refused_and_others_are_not(
    gateway: RunningGateway,
) -> None:
    key, key_id = await key_of(gateway, "busy")
    other, _ = await key_of(gateway, "calm")
    url, registry = gateway.url, gateway.gateway.registry
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http, anyio.create_task_group() as tg:
        session = await open_session(http, url, key)
        slow_modern = {**envelope("tools/call", {"name": "web__wait", "arguments": {"seconds": 60}}), "id": 7}
        # One slow call of each generation fills the key's cap.
        tg.start_soon(lambda: http.post(url, json=call("web__wait", {"seconds": 60}, 7), headers=session))
        tg.start_soon(
            lambda: http.post(
                url, json=slow_modern, headers={**routing_headers(slow_modern), "x-api-key": key}
            )
        )
        await until(lambda: registry.requests_in_flight(key_id) == PER_KEY)

        with anyio.fail_after(TIMEOUT):
            refused = await http.post(url, json=call("web__echo", {"text": "hi"}, 8), headers=session)
        assert refused.status_code == 429, refused.text
        assert refused.json()["id"] == 8
        assert "max_requests_in_flight_per_key" in refused.json()["error"]["message"]
        quick = {**envelope("tools/call", {"name": "web__echo", "arguments": {"text": "hi"}}), "id": 9}
        with anyio.fail_after(TIMEOUT):
            refused = await http.post(url, json=quick, headers={**routing_headers(quick), "x-api-key": key})
        assert refused.status_code == 429, refused.text
        assert "max_requests_in_flight_per_key" in refused.json()["error"]["message"]

        theirs = await open_session(http, url, other)
        with anyio.fail_after(TIMEOUT):
            answered = await http.post(url, json=call("web__echo", {"text": "hi"}, 1), headers=theirs)
        assert answered.status_code == 200 and answered.json()["result"]["content"][0]["text"] == "hi"

        # The host gives up on its slow calls: their places are the key's again.
        cancelled = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}}
        with anyio.fail_after(TIMEOUT):
            assert (await http.post(url, json=cancelled, headers=session)).status_code == 202
        tg.cancel_scope.cancel()
    await until(lambda: registry.requests_in_flight(key_id) == 0)
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        session = await open_session(http, url, key)
        with anyio.fail_after(TIMEOUT):
            answered = await http.post(url, json=call("web__echo", {"text": "again"}, 2), headers=session)
        assert answered.status_code == 200 and answered.json()["result"]["content"][0]["text"] == "again"
