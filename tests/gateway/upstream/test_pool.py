"""Shared upstream sessions: many host sessions' calls over a bounded pool of real stdio children,
kept apart (ids, progress, cancellation, subscriptions, log levels), and the caps on children
answered with a clear error. Children are counted through /proc."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

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
async def shared(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    config = keyless_config(
        tmp_path, demo_stdio_yaml(cwd=".", sessions="shared", extra="    max_sessions: 2")
    )
    async with serve_gateway(config) as running:
        yield running


def text(answer: dict[str, Any]) -> str:
    content: str = answer["result"]["content"][0]["text"]
    return content


async def test_concurrent_host_sessions_share_at_most_max_sessions_children(
    shared: RunningGateway, http: httpx2.AsyncClient, tmp_path: Path
) -> None:
    client = McpClient(http, shared.url, "")
    answers: dict[int, dict[str, Any]] = {}

    async def call(index: int, session: str) -> None:
        # Every host uses request id 1: unique only once the gateway remaps them upstream.
        message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "demo__wait", "arguments": {"seconds": 0.3}}}  # fmt: skip
        response = await http.post(shared.url, json=message, headers={**ACCEPT, "mcp-session-id": session})
        answers[index] = response.json()

    with anyio.fail_after(TIMEOUT):
        sessions = [await client.open() for _ in range(8)]
        async with anyio.create_task_group() as tg:
            for index, session in enumerate(sessions):
                tg.start_soon(call, index, session)
    assert [(answer["id"], text(answer)) for answer in answers.values()] == [(1, "waited")] * 8
    assert 1 <= len(children("gateway.demo", tmp_path)) <= 2
    assert shared.gateway.pools["demo"].sessions() == len(children("gateway.demo", tmp_path))


async def progress_call(
    http: httpx2.AsyncClient,
    url: str,
    session: str,
    steps: int,
    events: list[dict[str, Any]],
    first: anyio.Event,
) -> None:
    """A count_slowly call with progress token "p" and id "c", its events kept as they arrive."""
    params = {"name": "demo__count_slowly", "arguments": {"steps": steps}, "_meta": {"progressToken": "p"}}
    message = {"jsonrpc": "2.0", "id": "c", "method": "tools/call", "params": params}
    headers = {**ACCEPT, "mcp-session-id": session}
    async with http.stream("POST", url, json=message, headers=headers) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                first.set()


async def test_progress_and_cancellation_reach_only_their_own_host_on_one_shared_child(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    config = keyless_config(
        tmp_path, demo_stdio_yaml(cwd=".", sessions="shared", extra="    max_sessions: 1")
    )
    async with serve_gateway(config) as running:
        client = McpClient(http, running.url, "")
        long_events: list[dict[str, Any]] = []
        short_events: list[dict[str, Any]] = []
        long_started, short_started = anyio.Event(), anyio.Event()
        with anyio.fail_after(TIMEOUT):
            long_session, short_session = await client.open(), await client.open()
            async with anyio.create_task_group() as tg:
                tg.start_soon(progress_call, http, running.url, long_session, 1000, long_events, long_started)
                await long_started.wait()
                tg.start_soon(progress_call, http, running.url, short_session, 5, short_events, short_started)
                await short_started.wait()  # both calls now run on the one child
                cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "c"}}
                await http.post(running.url, json=cancel, headers={**ACCEPT, "mcp-session-id": long_session})
        assert len(children("gateway.demo", tmp_path)) == 1
    *long_progress, long_answer = long_events
    *short_progress, short_answer = short_events
    assert long_answer["id"] == "c" and long_answer["error"]["code"] == -32800
    assert short_answer["id"] == "c" and text(short_answer) == "counted 5"
    assert [event["params"]["total"] for event in short_progress] == [5] * 5
    assert {event["params"]["total"] for event in long_progress} == {1000}
    assert {event["params"]["progressToken"] for event in long_progress + short_progress} == {"p"}


async def test_a_resource_update_reaches_only_the_hosts_subscribed_to_it(
    shared: RunningGateway, http: httpx2.AsyncClient
) -> None:
    client = McpClient(http, shared.url, "")
    with anyio.fail_after(TIMEOUT):
        subscriber, other = await client.open(), await client.open()
        answer = await client.request(subscriber, "resources/subscribe", {"uri": "demo://readme"})
        assert answer["result"] == {}
        await client.call(other, "demo__echo", {"text": "hi"})  # both use the shared session
        await client.call(other, "demo__touch", {"uri": "demo://readme"})
    # Nobody listens on a GET stream here: what each session was sent waits in its buffer.
    assert buffered(shared, subscriber, "notifications/resources/updated") == 1
    assert buffered(shared, other, "notifications/resources/updated") == 0


def buffered(running: RunningGateway, session_id: str, method: str) -> int:
    """How many `method` messages wait for the session's GET stream."""
    session = next(s for s in running.gateway.registry.sessions() if s.id == session_id)
    return sum(1 for message in session.listen._buffer if message.get("method") == method)


async def test_past_an_upstreams_max_children_a_call_gets_a_clear_error_not_a_new_child(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    config = keyless_config(tmp_path, demo_stdio_yaml(cwd=".", extra="    max_children: 2"))
    async with serve_gateway(config) as running:
        client = McpClient(http, running.url, "")
        with anyio.fail_after(TIMEOUT):
            sessions = [await client.open() for _ in range(4)]
            await client.request(sessions[0], "tools/list", {})  # the catalogue's child: not a host's
            first, second = [await client.call(s, "demo__echo", {"text": "ok"}) for s in sessions[:2]]
            refused = await client.call(sessions[2], "demo__echo", {"text": "one too many"})
            assert text(first) == text(second) == "ok"
            assert refused["error"]["code"] == -32001
            assert "2 host sessions have a process of it running" in refused["error"]["message"]
            assert "max_children" in refused["error"]["message"]
            assert len(children("gateway.demo", tmp_path)) == 3
            # The upstream is not down for it: once a session ends, the next caller gets a child.
            await http.delete(running.url, headers={"mcp-session-id": sessions[0]})
            assert text(await client.call(sessions[3], "demo__echo", {"text": "room"})) == "room"
            assert running.gateway.config.upstreams[0].sessions == "per_host"


async def test_past_the_gateways_total_of_children_a_call_gets_a_clear_error(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    config = keyless_config(tmp_path, demo_stdio_yaml(cwd="."), "sessions: {max_children: 2}\n")
    async with serve_gateway(config) as running:
        client = McpClient(http, running.url, "")
        with anyio.fail_after(TIMEOUT):
            first, second = await client.open(), await client.open()
            assert text(await client.call(first, "demo__echo", {"text": "ok"})) == "ok"  # list + own: 2
            refused = await client.call(second, "demo__echo", {"text": "no"})
        assert refused["error"]["code"] == -32001
        assert "sessions.max_children" in refused["error"]["message"]
        assert len(children("gateway.demo", tmp_path)) == 2


async def test_each_host_on_a_shared_child_gets_log_messages_from_its_own_level_up(
    shared: RunningGateway, http: httpx2.AsyncClient
) -> None:
    client = McpClient(http, shared.url, "")
    logs: dict[str, list[str]] = {}
    with anyio.fail_after(TIMEOUT):
        sessions = {level: await client.open() for level in ("error", "info")}
        for level, session in sessions.items():  # the upstream is asked for info and up
            assert (await client.request(session, "logging/setLevel", {"level": level}))["result"] == {}
        for level, session in sessions.items():
            message = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                       "params": {"name": "demo__log_levels", "arguments": {}}}  # fmt: skip
            headers = {**ACCEPT, "mcp-session-id": session}
            async with http.stream("POST", shared.url, json=message, headers=headers) as response:
                events = [
                    json.loads(line[5:]) async for line in response.aiter_lines() if line.startswith("data:")
                ]
            logs[level] = [e["params"]["level"] for e in events if e.get("method") == "notifications/message"]
    assert logs == {"error": ["error"], "info": ["info", "warning", "error"]}


async def test_a_shared_child_that_dies_mid_call_fails_that_call_and_the_next_call_starts_another(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    config = keyless_config(
        tmp_path, demo_stdio_yaml(cwd=".", sessions="shared", extra="    max_sessions: 1")
    )
    async with serve_gateway(config) as running:
        client = McpClient(http, running.url, "")
        with anyio.fail_after(TIMEOUT):
            crasher, bystander = await client.open(), await client.open()
            assert text(await client.call(bystander, "demo__echo", {"text": "before"})) == "before"
            [first] = children("gateway.demo", tmp_path)
            crashed = await client.call(crasher, "demo__crash", {})
            assert crashed["error"]["code"] == -32001 and "exited" in crashed["error"]["message"]
            assert text(await client.call(bystander, "demo__echo", {"text": "after"})) == "after"
        assert [pid for pid in children("gateway.demo", tmp_path) if pid != first] != []
        assert first not in children("gateway.demo", tmp_path)


def faults_yaml() -> str:
    return f"""
  - name: faults
    transport: stdio
    command: [python, -m, tests.fault_upstream]
    env: {{PYTHONPATH: "{ROOT}"}}
    max_sessions: 1"""


async def test_a_request_from_a_shared_child_reaches_the_one_host_whose_call_is_in_flight(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    async with serve_gateway(keyless_config(tmp_path, faults_yaml())) as running:
        client = McpClient(http, running.url, "")
        events: list[dict[str, Any]] = []
        with anyio.fail_after(TIMEOUT):
            session = await client.open()
            message = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                       "params": {"name": "faults__ask_host", "arguments": {"calls": 0}}}  # fmt: skip
            headers = {**ACCEPT, "mcp-session-id": session}
            async with http.stream("POST", running.url, json=message, headers=headers) as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    event = json.loads(line[5:])
                    events.append(event)
                    if event.get("method") == "roots/list":  # the host answers, under the id it got
                        answer = {"jsonrpc": "2.0", "id": event["id"], "result": {"roots": []}}
                        await http.post(running.url, json=answer, headers=headers)
    asked, answered = events
    assert asked["method"] == "roots/list" and asked["id"] != "faults-roots"
    assert answered["id"] == 5 and text(answered) == 'answered {"result": {"roots": []}}'


async def test_a_request_from_a_shared_child_with_two_hosts_in_flight_is_answered_with_an_error(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    async with serve_gateway(keyless_config(tmp_path, faults_yaml())) as running:
        client = McpClient(http, running.url, "")
        answers: dict[str, dict[str, Any]] = {}

        async def call(name: str, session: str, tool: str, arguments: dict[str, Any]) -> None:
            answers[name] = await client.call(session, tool, arguments)

        with anyio.fail_after(TIMEOUT):
            asker, other = await client.open(), await client.open()
            await client.request(asker, "tools/list", {})  # the listing is done before the calls
            async with anyio.create_task_group() as tg:
                # The child holds the other host's call, then asks a host something: two are in flight.
                tg.start_soon(call, "asker", asker, "faults__ask_host", {"calls": 1})
                tg.start_soon(call, "other", other, "faults__echo", {"text": "held"})
    assert text(answers["other"]) == "held"
    refused = json.loads(text(answers["asker"]).removeprefix("answered "))
    assert refused["error"]["code"] == -32600
    assert "sessions: per_host" in refused["error"]["message"]
