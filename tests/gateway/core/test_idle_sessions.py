"""Sessions nobody closes: a host session with no request and no open stream for `sessions.idle_s`
is ended by the reaper (recorded as idle) and its children stop; an open GET stream keeps it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import anyio
import httpx2
import pytest

from tests.api.conftest import ACCEPT, McpClient
from tests.harness import ROOT, RunningGateway, demo_stdio_yaml, keyless_config, serve_gateway
from tests.processes import children

TIMEOUT = 30.0


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as client:
        yield client


@pytest.fixture
async def forgetful(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    """Any pause at all is idle: each sweep of the reaper (run by the tests) ends what is idle."""
    config = keyless_config(tmp_path, demo_stdio_yaml(cwd="."), "sessions: {idle_s: 0.000001}\n")
    async with serve_gateway(config) as running:
        yield running


def end_reasons(running: RunningGateway) -> dict[str, str | None]:
    with closing(sqlite3.connect(running.gateway.config.database)) as db:
        return dict(db.execute("SELECT client_name, end_reason FROM sessions").fetchall())


async def test_a_session_with_no_request_and_no_stream_is_ended_as_idle_and_its_child_stops(
    forgetful: RunningGateway, http: httpx2.AsyncClient, tmp_path: Path
) -> None:
    client = McpClient(http, forgetful.url, "")
    with anyio.fail_after(TIMEOUT):
        session = await client.open(name="abandoned")
        await client.call(session, "demo__echo", {"text": "then gone"})
        [own_child] = next(
            s for s in forgetful.gateway.registry.sessions() if s.id == session
        ).open_upstreams()
        running = len(children("gateway.demo", tmp_path))  # its own, and the catalogue's listing child
        await forgetful.gateway.registry.reap()  # the reaper's sweep, run now
        ping = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
        gone = await http.post(forgetful.url, json=ping, headers={**ACCEPT, "mcp-session-id": session})
    assert forgetful.gateway.registry.sessions() == []
    assert own_child.channel.closed
    assert len(children("gateway.demo", tmp_path)) == running - 1
    assert end_reasons(forgetful) == {"abandoned": "idle"}
    assert gone.status_code == 404


async def test_an_open_get_stream_keeps_a_quiet_session_until_it_closes(
    forgetful: RunningGateway, http: httpx2.AsyncClient
) -> None:
    client = McpClient(http, forgetful.url, "")
    with anyio.fail_after(TIMEOUT):
        listening = await client.open(name="listening")
        await client.open(name="quiet")  # opened, then never used
        # A list change announced while no stream is open waits in the session's buffer, so the
        # stream's first event says the stream is attached.
        await client.call(listening, "demo__add_tool", {"name": "extra"})
        headers = {"accept": "text/event-stream", "mcp-session-id": listening}
        async with http.stream("GET", forgetful.url, headers=headers) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data:"):
                    assert json.loads(line[5:])["method"] == "notifications/tools/list_changed"
                    break
            await forgetful.gateway.registry.reap()
            assert [s.id for s in forgetful.gateway.registry.sessions()] == [listening]
        held = next(s for s in forgetful.gateway.registry.sessions() if s.id == listening)
        await held.listen.closed()  # the gateway saw the stream go
        await forgetful.gateway.registry.reap()
    assert forgetful.gateway.registry.sessions() == []
    assert end_reasons(forgetful) == {"listening": "idle", "quiet": "idle"}


async def test_idle_sessions_end_side_by_side_not_one_slow_child_after_another(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    """Each session's stdio child here outlives its stdin (a wrapper that goes on after the
    server exits), so ending one waits the two seconds the gateway gives a child before it
    stops it. Four idle sessions ended one after another held the reaper (and every session
    behind them) for eight seconds or more; side by side they take the two seconds once."""
    slow = f"""
  - name: demo
    transport: stdio
    command: [sh, -c, "python -m gateway.demo; sleep 30"]
    env: {{PYTHONPATH: "{ROOT}"}}
    sessions: per_host
"""
    config = keyless_config(tmp_path, slow, "sessions: {idle_s: 0.000001}\n")
    async with serve_gateway(config) as running:
        client = McpClient(http, running.url, "")
        with anyio.fail_after(TIMEOUT):
            for n in range(4):
                session = await client.open(name=f"idle-{n}")
                await client.call(session, "demo__echo", {"text": "then gone"})
        started = anyio.current_time()
        with anyio.fail_after(TIMEOUT):
            await running.gateway.registry.reap()
        took = anyio.current_time() - started
    assert took < 6.0, f"the reaper took {took:.1f}s to end four idle sessions"
    assert set(end_reasons(running).values()) == {"idle"}
