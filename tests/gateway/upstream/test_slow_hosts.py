"""A host that stops reading holds up only what is meant for it.

One stdio child shared by every host session (`sessions: shared`, `max_sessions: 1`, so every
call is multiplexed on it rather than given a fresh child while it is busy) is read by one task: what it
writes for a call (progress, logs, its own requests) goes to that call's host, the answers to
everyone else's calls come down the same pipe. A host that asks for a call with a lot of
progress and then reads nothing (a small receive buffer, so the gateway's writes stall within
kilobytes) must not stall that reader: another host's call on the same child is answered at
once, not when the write timeout (`security.write_timeout_s`, 30 s) closes the stalled host.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx2
import pytest

from tests.harness import ROOT, RunningGateway, keyless_config, serve_gateway

TIMEOUT = 10.0  # well under the 30 s write timeout that would unstick the reader otherwise
ACCEPT = {"accept": "application/json, text/event-stream"}
FLOOD = {"messages": 400, "size": 32 * 1024}  # 13 MB of progress: past any socket buffer


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    upstream = f"""
  - name: faults
    transport: stdio
    command: [python, -m, tests.fault_upstream]
    env: {{PYTHONPATH: "{ROOT}"}}
    sessions: shared
    max_sessions: 1"""
    async with serve_gateway(keyless_config(tmp_path, upstream)) as running:
        yield running


async def open_session(http: httpx2.AsyncClient, url: str) -> str:
    init = {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "slow", "version": "1"},
    }
    opened = await http.post(
        url, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init}, headers=ACCEPT
    )
    assert opened.status_code == 200, opened.text
    session: str = opened.headers["mcp-session-id"]
    return session


async def flood_unread(gateway: RunningGateway, session: str) -> asyncio.StreamWriter:
    """Ask for the flood over a raw connection, read until its first byte comes (the child is
    flooding by then), then read nothing more."""
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "faults__flood", "arguments": FLOOD, "_meta": {"progressToken": "flood"}},
    }
    body = json.dumps(message).encode()
    head = "\r\n".join(
        [
            "POST /mcp HTTP/1.1",
            "host: 127.0.0.1",
            "accept: application/json, text/event-stream",
            "content-type: application/json",
            f"mcp-session-id: {session}",
            "mcp-protocol-version: 2025-11-25",
            f"content-length: {len(body)}",
            "",
            "",
        ]
    ).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(gateway.base_url.rsplit(":", 1)[1])))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(head + body)
    await writer.drain()
    assert (await reader.read(12)).startswith(b"HTTP/1.1 200")
    return writer


async def test_a_host_that_stops_reading_does_not_stall_other_hosts_calls_on_a_shared_child(
    gateway: RunningGateway,
) -> None:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        other = await open_session(http, gateway.url)
        headers = {**ACCEPT, "mcp-session-id": other, "mcp-protocol-version": "2025-11-25"}
        call = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "faults__echo"}}
        first = await http.post(gateway.url, json={**call, "id": 1}, headers=headers)
        assert first.status_code == 200, first.text  # the shared child runs

        stalled = await flood_unread(gateway, await open_session(http, gateway.url))
        try:
            # The child reads its requests one by one: it answers these once it has written the
            # whole flood, which takes the gateway reading all of it while its host reads none.
            with anyio.fail_after(TIMEOUT):
                for n in range(2, 5):
                    params = {"name": "faults__echo", "arguments": {"text": f"still {n}"}}
                    answer = await http.post(
                        gateway.url, json={**call, "id": n, "params": params}, headers=headers
                    )
                    assert answer.json()["result"]["content"][0]["text"] == f"still {n}", answer.text
        finally:
            stalled.close()
