"""What a client can make the gateway hold is capped: host sessions per key and in all, and
2026-07-28 groups per key (the oldest is evicted), each with a clear answer past the cap."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from typing import Any

import anyio
import httpx2
import pytest

from tests.harness import INITIALIZE, RunningGateway, demo_stdio_yaml, serve_gateway, write_config

TIMEOUT = 20.0
ACCEPT = {"accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
async def capped(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    config = write_config(
        tmp_path_factory.mktemp("capped"),
        f"""
database: ./gw.db
auth: {{required: true}}
sessions: {{max_per_key: 2, max_total: 5, groups_per_key: 2}}
upstreams:{demo_stdio_yaml()}
""",
    )
    async with serve_gateway(config) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as client:
        yield client


async def new_key(gateway: RunningGateway) -> str:
    store = gateway.gateway.store
    org = await store.ensure_organisation("capped")
    return (await store.create_api_key(org.id)).secret


async def initialize(http: httpx2.AsyncClient, gateway: RunningGateway, key: str) -> httpx2.Response:
    with anyio.fail_after(TIMEOUT):
        return await http.post(gateway.url, json=INITIALIZE, headers={**ACCEPT, "x-api-key": key})


async def test_a_key_past_its_session_cap_is_told_so_and_can_open_one_once_another_ends(
    capped: RunningGateway, http: httpx2.AsyncClient
) -> None:
    key = await new_key(capped)
    first, second = await initialize(http, capped, key), await initialize(http, capped, key)
    assert first.status_code == second.status_code == 200
    third = await initialize(http, capped, key)
    assert third.status_code == 429, third.text
    assert "2 open sessions" in third.json()["error"]["message"]
    ended = await http.delete(
        capped.url, headers={"x-api-key": key, "mcp-session-id": first.headers["mcp-session-id"]}
    )
    assert ended.status_code == 200
    assert (await initialize(http, capped, key)).status_code == 200


async def test_past_the_gateways_session_cap_every_key_is_told_so(
    capped: RunningGateway, http: httpx2.AsyncClient
) -> None:
    opened: list[tuple[str, httpx2.Response]] = []
    for _ in range(6):
        key = await new_key(capped)
        opened.append((key, await initialize(http, capped, key)))
    assert len(capped.gateway.registry) == 5  # full: whatever earlier tests left open, and these
    refused = [response for _, response in opened if response.status_code != 200]
    assert refused and all(response.status_code == 503 for response in refused)
    assert "sessions, its limit" in refused[0].json()["error"]["message"]
    for key, response in opened:  # leave room for the other tests
        if response.status_code == 200:
            session = {"x-api-key": key, "mcp-session-id": response.headers["mcp-session-id"]}
            assert (await http.delete(capped.url, headers=session)).status_code == 200


def modern_call(name: str) -> dict[str, Any]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": name, "version": "1"},
    }
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "demo__echo", "arguments": {"text": name}, "_meta": meta},
    }


async def test_a_key_that_varies_its_client_name_keeps_at_most_its_cap_of_groups(
    capped: RunningGateway, http: httpx2.AsyncClient
) -> None:
    key = await new_key(capped)
    headers = {
        **ACCEPT,
        "x-api-key": key,
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "demo__echo",
    }
    for name in ("one", "two", "three", "four"):
        with anyio.fail_after(TIMEOUT):
            answer = await http.post(capped.url, json=modern_call(name), headers=headers)
        assert answer.status_code == 200 and answer.json()["result"]["content"][0]["text"] == name
    groups = [
        s
        for s in capped.gateway.registry.sessions()
        if s.principal.api_key_id is not None
        and s.handshake.client_info.get("name") in ("one", "two", "three", "four")
    ]
    assert sorted(s.handshake.client_info["name"] for s in groups) == ["four", "three"]
    with closing(sqlite3.connect(capped.gateway.config.database)) as db:
        reasons = dict(
            db.execute(
                "SELECT client_name, end_reason FROM sessions WHERE client_name IN ('one', 'two')"
            ).fetchall()
        )
    assert reasons == {"one": "evicted", "two": "evicted"}
