"""Upstreams that are down: what the host sees, what is recorded, and what `/readyz` says.

Real parts throughout: a stdio upstream whose command does not exist, one that exits at start
(`tests.fault_upstream --exit-at-start`), one that dies mid-call (`faults__crash`), one that never
finishes its handshake (`--mute`), and HTTP upstreams where nothing listens, one of which comes
back when a real server starts on its port while the gateway runs.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import orjson
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.gateway.test_faults import Host, faults_yaml, recorded_call
from tests.harness import (
    ROOT,
    RunningGateway,
    demo_stdio_yaml,
    keyless_config,
    serve_asgi_on,
    serve_gateway,
)
from tests.upstreams import catalogue_server

TIMEOUT = 20.0
MISSING_COMMAND = "mcpgw-test-no-such-command"


def free_url() -> tuple[socket.socket, str]:
    """A loopback port that was free a moment ago, for an upstream that is not there yet: the
    socket is bound (so the port can be taken again with SO_REUSEADDR) but not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"


def fault_yaml(name: str, flag: str, extra: str = "") -> str:
    return f"""
  - name: {name}
    transport: stdio
    command: [python, -m, tests.fault_upstream, {flag}]
    env: {{PYTHONPATH: "{ROOT}"}}
{extra}"""


MISSING_YAML = f"\n  - {{name: missing, transport: stdio, command: [{MISSING_COMMAND}]}}"


@pytest.fixture(scope="module")
async def broken(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    """demo (required) and faults are fine; missing, quits and dead cannot be reached."""
    unbound, dead_url = free_url()
    unbound.close()
    upstreams = (
        demo_stdio_yaml(extra="    required: true")
        + faults_yaml()
        + MISSING_YAML
        + fault_yaml("quits", "--exit-at-start")
        + f"\n  - {{name: dead, transport: http, url: '{dead_url}', timeouts: {{connect_s: 1}},"
        + " tools: {deny: [secret]}}"
    )
    config = keyless_config(tmp_path_factory.mktemp("broken"), upstreams)
    async with serve_gateway(config) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as client:
        yield client


class Warnings:
    """The `notifications/message` warnings a host received, by the upstream they name."""

    def __init__(self) -> None:
        self.by_upstream: dict[str, dict[str, Any]] = {}
        self.changed = anyio.Event()  # notifications/tools/list_changed arrived

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        if params.level == "warning" and isinstance(params.data, dict) and "upstream" in params.data:
            self.by_upstream[params.data["upstream"]] = params.data

    async def on_message(self, message: object) -> None:
        if (
            isinstance(message, types.ServerNotification)
            and message.method == "notifications/tools/list_changed"
        ):
            self.changed.set()


def sdk_host(gateway: RunningGateway, mode: str, seen: Warnings) -> Client:
    # A 2026-07-28 host is told of log messages only if its requests ask for them.
    log_level: types.LoggingLevel | None = "warning" if mode != "legacy" else None
    return Client(
        gateway.url,
        mode=mode,
        logging_callback=seen.on_log,
        message_handler=seen.on_message,
        log_level=log_level,
        cache=None,
    )


async def readiness(http: httpx2.AsyncClient, gateway: RunningGateway) -> tuple[int, dict[str, Any]]:
    with anyio.fail_after(TIMEOUT):
        response = await http.get(f"{gateway.base_url}/readyz")
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    return response.status_code, body


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_a_listing_answers_with_the_rest_and_warns_the_host_of_each_missing_upstream(
    broken: RunningGateway, mode: str
) -> None:
    seen = Warnings()
    async with sdk_host(broken, mode, seen) as client:
        with anyio.fail_after(TIMEOUT):
            names = {tool.name for tool in (await client.list_tools()).tools}
    assert {"demo__echo", "faults__echo"} <= names
    assert not [name for name in names if name.split("__")[0] in ("missing", "quits", "dead")]
    assert sorted(seen.by_upstream) == ["dead", "missing", "quits"]
    assert MISSING_COMMAND in seen.by_upstream["missing"]["error"]
    assert "exited" in seen.by_upstream["quits"]["error"]
    assert "exit code 3" in seen.by_upstream["quits"]["error"]
    assert "could not connect" in seen.by_upstream["dead"]["error"]
    assert "'dead'" in seen.by_upstream["dead"]["message"]


async def test_a_host_that_takes_only_json_answers_gets_the_warning_on_its_get_stream(
    broken: RunningGateway, http: httpx2.AsyncClient
) -> None:
    host = await Host(http, broken.url).open()
    listen = {"accept": "text/event-stream", "mcp-session-id": host.session_id}
    async with http.stream("GET", broken.url, headers=listen) as stream:
        assert stream.status_code == 200
        listed = await host.post(
            orjson.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}),
            {"accept": "application/json"},
        )
        assert listed.headers["content-type"].startswith("application/json")
        assert "demo__echo" in {tool["name"] for tool in listed.json()["result"]["tools"]}
        warned: set[str] = set()
        with anyio.fail_after(TIMEOUT):
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    message = orjson.loads(line[6:])
                    if message.get("method") == "notifications/message":
                        assert message["params"]["level"] == "warning"
                        warned.add(message["params"]["data"]["upstream"])
                if warned == {"missing", "quits", "dead"}:
                    break


@pytest.mark.parametrize(
    ("upstream", "cause"),
    [("missing", MISSING_COMMAND), ("quits", "exit code 3"), ("dead", "could not connect")],
)
async def test_a_call_to_a_down_upstream_names_it_and_its_cause_and_is_recorded_as_upstream_error(
    broken: RunningGateway, http: httpx2.AsyncClient, upstream: str, cause: str
) -> None:
    host = await Host(http, broken.url).open()
    answer = await host.call(f"{upstream}__echo", {"text": "hello"})
    assert answer["error"]["code"] == -32001, answer
    assert f"'{upstream}'" in answer["error"]["message"] and cause in answer["error"]["message"]
    row = recorded_call(broken.gateway.config.database, f"{upstream}__echo")
    assert row["outcome"] == "upstream_error"
    assert row["upstream"] == upstream and row["upstream_name"] == "echo"


async def test_a_down_upstreams_tool_filter_still_refuses_what_it_denies(
    broken: RunningGateway, http: httpx2.AsyncClient
) -> None:
    """A regression guard: routing by prefix to a down upstream must not bypass its filter."""
    host = await Host(http, broken.url).open()
    answer = await host.call("dead__secret", {})
    assert answer["error"]["code"] == -32602 and "Unknown tool" in answer["error"]["message"]
    assert recorded_call(broken.gateway.config.database, "dead__secret")["outcome"] == "denied"


async def test_readyz_reports_every_upstreams_state_its_last_error_and_last_answer(
    broken: RunningGateway, http: httpx2.AsyncClient
) -> None:
    host = await Host(http, broken.url).open()
    await host.post_json({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})  # every upstream tried
    status, body = await readiness(http, broken)
    assert status == 200 and body["status"] == "ready"  # only demo is required, and it is up
    assert body["database"] == {"writable": True}
    upstreams = body["upstreams"]
    assert list(upstreams) == ["demo", "faults", "missing", "quits", "dead"]
    assert upstreams["demo"]["state"] == "up" and upstreams["demo"]["required"] is True
    assert upstreams["demo"]["last_answered_at"] is not None
    for name, cause in (
        ("missing", MISSING_COMMAND),
        ("quits", "exit code 3"),
        ("dead", "could not connect"),
    ):
        assert upstreams[name]["state"] == "down", upstreams[name]
        assert upstreams[name]["required"] is False
        assert cause in upstreams[name]["last_error"]
        assert upstreams[name]["last_error_at"] is not None
    assert upstreams["dead"]["last_answered_at"] is None
    assert upstreams["quits"]["transport"] == "stdio" and upstreams["dead"]["transport"] == "http"


async def test_an_upstream_that_dies_mid_call_fails_that_call_and_stays_listed_and_up(
    broken: RunningGateway, http: httpx2.AsyncClient
) -> None:
    host = await Host(http, broken.url).open()
    answer = await host.call("faults__crash", {})
    assert answer["error"]["code"] == -32001
    assert (
        "'faults'" in answer["error"]["message"] and "exited before answering" in answer["error"]["message"]
    )
    assert recorded_call(broken.gateway.config.database, "faults__crash")["outcome"] == "upstream_error"
    seen = Warnings()
    async with sdk_host(broken, "legacy", seen) as client:
        with anyio.fail_after(TIMEOUT):
            names = {tool.name for tool in (await client.list_tools()).tools}
    assert "faults__echo" in names and "faults" not in seen.by_upstream
    _, body = await readiness(http, broken)
    faults = body["upstreams"]["faults"]
    assert faults["state"] == "up"
    assert "exited before answering" in faults["last_error"]


async def test_readyz_before_anything_used_an_optional_upstream_calls_it_unknown_and_is_ready(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    async with serve_gateway(keyless_config(tmp_path, demo_stdio_yaml())) as gateway:
        status, body = await readiness(http, gateway)
    assert status == 200 and body["status"] == "ready"
    assert body["upstreams"]["demo"] == {
        "state": "unknown",
        "transport": "stdio",
        "required": False,
        "since": body["upstreams"]["demo"]["since"],
        "last_error": None,
        "last_error_at": None,
        "last_answered_at": None,
        "next_attempt_at": None,
    }


async def test_readyz_is_503_while_a_required_upstream_is_down(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    upstreams = demo_stdio_yaml() + MISSING_YAML[:-1] + ", required: true}"
    async with serve_gateway(keyless_config(tmp_path, upstreams)) as gateway:
        host = await Host(http, gateway.url).open()
        await host.post_json({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        status, body = await readiness(http, gateway)
        health = await http.get(f"{gateway.base_url}/healthz")
    assert status == 503 and body["status"] == "not_ready"
    assert body["upstreams"]["missing"]["state"] == "down" and body["upstreams"]["missing"]["required"]
    assert MISSING_COMMAND in body["upstreams"]["missing"]["last_error"]
    assert body["upstreams"]["missing"]["next_attempt_at"] is not None
    assert health.status_code == 200  # alive, only not ready


async def test_a_required_upstream_is_tried_at_startup_and_then_ready(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    async with serve_gateway(
        keyless_config(tmp_path, demo_stdio_yaml(extra="    required: true"))
    ) as gateway:
        with anyio.fail_after(TIMEOUT):  # no host has asked for anything: the gateway tries it itself
            await gateway.gateway.readiness.upstreams["demo"].tried.wait()
        status, body = await readiness(http, gateway)
    assert status == 200 and body["status"] == "ready"
    assert body["upstreams"]["demo"]["state"] == "up"


@contextmanager
def write_lock_held(database: Path) -> Iterator[None]:
    """Another process's write transaction on the gateway's database, as long as this runs."""
    with closing(sqlite3.connect(database, timeout=0, isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            db.execute("ROLLBACK")


async def test_readyz_is_503_while_the_database_cannot_be_written(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    async with serve_gateway(keyless_config(tmp_path, "")) as gateway:
        with write_lock_held(gateway.gateway.config.database):
            status, body = await readiness(http, gateway)
        assert status == 503 and body["status"] == "not_ready"
        assert body["database"]["writable"] is False and body["database"]["error"]
        status, body = await readiness(http, gateway)
    assert status == 200 and body["database"] == {"writable": True}


async def test_while_an_upstream_is_down_a_listing_does_not_wait_for_its_connect_timeout_again(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    upstreams = demo_stdio_yaml() + fault_yaml("mute", "--mute", "    timeouts: {connect_s: 3}")
    async with serve_gateway(keyless_config(tmp_path, upstreams)) as gateway:
        host = await Host(http, gateway.url).open()
        durations = []
        for request_id in range(4):
            started = time.perf_counter()
            listed = await host.post(
                orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/list"}),
                {"accept": "application/json"},  # the answer alone: its warnings go to the GET stream
            )
            durations.append(time.perf_counter() - started)
            assert "demo__echo" in {tool["name"] for tool in listed.json()["result"]["tools"]}
        answer = await host.call("mute__echo", {})
    assert durations[0] >= 3  # the first try waits for the handshake it never gets
    assert max(durations[1:]) < 1.5, durations  # then the upstream is known to be down
    assert "no handshake within 3s" in answer["error"]["message"]


@asynccontextmanager
async def upstream_on(sock: socket.socket) -> AsyncIterator[None]:
    """A real MCP server (`catalogue_server`) listening on the port `sock` is bound to."""
    sock.listen(128)
    sock.setblocking(False)
    async with serve_asgi_on(sock, catalogue_server("later").streamable_http_app()):
        yield


async def test_an_http_upstream_that_comes_back_is_listed_again_and_hosts_are_told(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    sock, url = free_url()
    upstreams = demo_stdio_yaml() + f"\n  - {{name: later, transport: http, url: '{url}'}}"
    async with serve_gateway(keyless_config(tmp_path, upstreams)) as gateway:
        seen = Warnings()
        async with sdk_host(gateway, "legacy", seen) as client:
            with anyio.fail_after(TIMEOUT):
                before = {tool.name for tool in (await client.list_tools()).tools}
                with pytest.raises(MCPError) as caught:
                    await client.call_tool("later__search", {"query": "dune"})
            assert "demo__echo" in before and "later__search" not in before
            assert "later" in seen.by_upstream
            assert caught.value.error.code == -32001 and "'later'" in caught.value.error.message
            _, body = await readiness(http, gateway)
            assert body["upstreams"]["later"]["state"] == "down"
            async with upstream_on(sock):
                with anyio.fail_after(TIMEOUT):
                    await seen.changed.wait()  # the gateway found it back, and told the host
                    after = {tool.name for tool in (await client.list_tools()).tools}
                    found = await client.call_tool("later__search", {"query": "dune"})
                _, body = await readiness(http, gateway)
    assert "later__search" in after
    block = found.content[0]
    assert isinstance(block, types.TextContent) and block.text == "later found dune"
    assert body["upstreams"]["later"]["state"] == "up"
    assert body["upstreams"]["later"]["last_answered_at"] is not None
    assert recorded_call(gateway.gateway.config.database, "later__search")["outcome"] == "ok"
