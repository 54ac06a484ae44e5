"""The `mcpgw` command as a user runs it: serve the example config, create keys, bridge stdio."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.harness import ROOT, stop_process

TIMEOUT = 30.0
MCPGW = [sys.executable, "-m", "gateway.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def run_mcpgw(*args: str, cwd: Path = ROOT) -> tuple[int, str, str]:
    with anyio.fail_after(TIMEOUT):
        done = await anyio.run_process([*MCPGW, *args], cwd=cwd, check=False, env=_env())
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@asynccontextmanager
async def mcpgw_serve(config: Path, port: int) -> AsyncIterator[str]:
    """`mcpgw serve` as a child process; yields its MCP URL once uvicorn says it is listening."""
    proc = await anyio.open_process(
        [*MCPGW, "serve", "--config", str(config), "--port", str(port)], cwd=config.parent, env=_env()
    )
    try:
        assert proc.stderr is not None
        seen = b""
        with anyio.fail_after(TIMEOUT):
            while b"Uvicorn running on" not in seen:
                chunk = await proc.stderr.receive()
                seen += chunk
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        await stop_process(proc)


def copy_example(directory: Path, **replace: str) -> Path:
    text = (ROOT / "config.example.yaml").read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    path = directory / "config.yaml"
    path.write_text(text)
    return path


async def test_the_example_config_serves_the_demo_upstream(tmp_path: Path) -> None:
    config = copy_example(tmp_path)
    async with mcpgw_serve(config, free_port()) as url, Client(url, mode="legacy") as client:
        with anyio.fail_after(TIMEOUT):
            tools = await client.list_tools()
            result = await client.call_tool("demo__echo", {"text": "from the README"})
    assert "demo__echo" in {tool.name for tool in tools.tools}
    block = result.content[0]
    assert isinstance(block, types.TextContent) and block.text == "from the README"
    assert (tmp_path / "mcpgw.db").exists()  # the embedded database lives beside the config


async def test_mcpgw_sessions_lists_the_record_and_shows_one_sessions_calls(tmp_path: Path) -> None:
    config = copy_example(tmp_path)
    async with mcpgw_serve(config, free_port()) as url, Client(url, mode="legacy") as client:
        with anyio.fail_after(TIMEOUT):
            await client.call_tool("demo__echo", {"text": "one"})
            await client.call_tool("demo__fail", {})
    code, listing, err = await run_mcpgw("sessions", "--config", str(config))
    assert code == 0, err
    header, row = listing.splitlines()
    assert header.split()[:4] == ["LAST", "CALL", "(UTC)", "SESSION"]
    session_id = row.split()[2]
    assert row.split()[-3:] == ["2", "ended", "(deleted)"]  # two calls; the client ended it with DELETE

    code, shown, err = await run_mcpgw("sessions", "show", session_id, "--config", str(config))
    assert code == 0, err
    calls = [line.split() for line in shown.splitlines()[2:]]
    assert [(c[2], c[3]) for c in calls] == [("demo__echo", "ok"), ("demo__fail", "tool_error")]
    assert all(len(c[5]) == 32 for c in calls)  # the trace id

    code, _, err = await run_mcpgw("sessions", "show", "no-such-session", "--config", str(config))
    assert code == 1 and "no session" in err + _


async def test_a_key_created_while_serving_works_at_once(tmp_path: Path) -> None:
    config = copy_example(tmp_path, **{"required: false": "required: true"})
    async with mcpgw_serve(config, free_port()) as url:
        async with httpx2.AsyncClient() as http:
            refused = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert refused.status_code == 401
        code, out, err = await run_mcpgw(
            "keys", "create", "--config", str(config), "--org", "acme", "--user", "ada"
        )
        assert code == 0, err
        created = json.loads(out)
        assert set(created) == {"organisationId", "apiKeyId", "key"}
        assert created["key"].startswith("mgw_")
        async with (
            httpx2.AsyncClient(headers={"authorization": f"Bearer {created['key']}"}) as http,
            Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
        ):
            with anyio.fail_after(TIMEOUT):
                result = await client.call_tool("demo__echo", {"text": "keyed"})
        assert not result.is_error


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"transport: stdio": "transport: carrier-pigeon"}, "upstreams[0].transport"),
        ({"listen:": "listen:\n  colour: blue"}, "listen.colour"),
        (
            {"required: false": "required: false\n  secret: ${MCPGW_TEST_UNSET_VARIABLE}"},
            "MCPGW_TEST_UNSET_VARIABLE",
        ),
    ],
    ids=["bad-transport", "unknown-key", "unset-env"],
)
async def test_a_bad_config_stops_serve_naming_file_key_and_reason(
    tmp_path: Path, change: dict[str, str], expected: str
) -> None:
    config = copy_example(tmp_path, **change)
    code, _, err = await run_mcpgw("serve", "--config", str(config))
    assert code == 2
    assert str(config) in err or "config.yaml" in err
    assert expected in err


async def test_serve_answers_a_silent_connection_408_and_too_many_headers_431(tmp_path: Path) -> None:
    config = copy_example(tmp_path, **{"\nlisten:\n": "\nsecurity: {header_timeout_s: 1}\nlisten:\n"})
    port = free_port()
    async with mcpgw_serve(config, port):
        silent = await asyncio.open_connection("127.0.0.1", port)
        crowded = await asyncio.open_connection("127.0.0.1", port)
        headers = "".join(f"x-filler-{i}: {i}\r\n" for i in range(101))
        crowded[1].write(f"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n{headers}\r\n".encode())
        with anyio.fail_after(TIMEOUT):
            refused = await crowded[0].read()
            timed_out = await silent[0].read()
        for _, writer in (silent, crowded):
            writer.close()
    assert refused.startswith(b"HTTP/1.1 431 ")
    assert timed_out.startswith(b"HTTP/1.1 408 ")


async def test_keyless_mode_refuses_a_non_loopback_listen_address(tmp_path: Path) -> None:
    config = copy_example(tmp_path)
    code, _, err = await run_mcpgw("serve", "--config", str(config), "--host", "0.0.0.0")
    assert code == 2
    assert "loopback" in err


async def test_stdio_bridge_relays_a_stdio_host_to_the_gateway(tmp_path: Path) -> None:
    config = copy_example(tmp_path)
    async with mcpgw_serve(config, free_port()) as url:
        bridge = StdioServerParameters(
            command=sys.executable,
            args=["-m", "gateway.cli", "stdio", "--url", url],
            env=_env(),
            cwd=str(ROOT),
        )
        reported: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            reported.append(progress)

        async with Client(bridge, mode="legacy") as client:
            with anyio.fail_after(TIMEOUT):
                echoed = await client.call_tool("demo__echo", {"text": "bridged"})
                counted = await client.call_tool(
                    "demo__count_slowly", {"steps": 2}, progress_callback=on_progress
                )
    block = echoed.content[0]
    assert isinstance(block, types.TextContent) and block.text == "bridged"
    assert not counted.is_error
    assert reported == [1, 2]
