"""`mcpgw stdio`, the bridge a stdio-only host (Claude Desktop) runs, as that host sees it.

The bridge is a child process talking to a real `mcpgw serve`, which the tests stop and start
again on the same port, as a user restarting the gateway does.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import orjson
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp.client.stdio import StdioServerParameters

from tests.gateway.cli.commands import (
    MCPGW,
    TIMEOUT,
    Child,
    child,
    copy_example,
    free_port,
    mcpgw_env,
    recorded_sessions,
    serving,
)
from tests.harness import ROOT

GATEWAY_UNREACHABLE = -32001


@dataclass
class Host:
    """A stdio host driving `mcpgw stdio` line by line: what it writes, what it reads back."""

    bridge: Child
    lines: BufferedByteReceiveStream

    async def send(self, message: dict[str, Any]) -> None:
        assert self.bridge.process.stdin is not None
        await self.bridge.process.stdin.send(orjson.dumps(message) + b"\n")

    async def answer(self, request_id: int) -> dict[str, Any]:
        """The bridge's answer to request `request_id`, past anything else it writes first."""
        while True:
            message: dict[str, Any] = orjson.loads(await self.lines.receive_until(b"\n", 1 << 20))
            if message.get("id") == request_id and "method" not in message:
                return message

    async def request(self, request_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
        await self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        with anyio.fail_after(TIMEOUT):
            return await self.answer(request_id)

    async def initialize(self, name: str) -> None:
        params = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": name, "version": "7"},
        }
        answer = await self.request(1, "initialize", params)
        assert "result" in answer, answer
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def echo(self, request_id: int, text: str) -> dict[str, Any]:
        return await self.request(
            request_id, "tools/call", {"name": "demo__echo", "arguments": {"text": text}}
        )


@asynccontextmanager
async def bridging(url: str) -> AsyncIterator[Host]:
    """`mcpgw stdio --url URL` as a child process."""
    async with child([*MCPGW, "stdio", "--url", url], ROOT) as bridge:
        assert bridge.process.stdout is not None
        yield Host(bridge, BufferedByteReceiveStream(bridge.process.stdout))


def text_of(answer: dict[str, Any]) -> str:
    assert "result" in answer, answer
    text: str = answer["result"]["content"][0]["text"]
    return text


async def test_the_bridge_relays_calls_progress_elicitation_and_the_sessions_stream(tmp_path: Path) -> None:
    config = copy_example(tmp_path)
    async with serving(config, free_port()) as served:
        bridge = StdioServerParameters(
            command=sys.executable,
            args=["-m", "gateway.cli", "stdio", "--url", served.url],
            env=mcpgw_env(),
            cwd=str(ROOT),
        )
        reported: list[float] = []
        list_changed = anyio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            reported.append(progress)

        async def on_elicit(
            context: ClientRequestContext, params: types.ElicitRequestParams
        ) -> types.ElicitResult:
            return types.ElicitResult(action="accept", content={"name": "Grace"})

        async def on_message(message: object) -> None:
            if (
                isinstance(message, types.ServerNotification)
                and message.method == "notifications/tools/list_changed"
            ):
                list_changed.set()

        async with Client(
            bridge, mode="legacy", elicitation_callback=on_elicit, message_handler=on_message
        ) as client:
            with anyio.fail_after(TIMEOUT):
                echoed = await client.call_tool("demo__echo", {"text": "bridged"})
                counted = await client.call_tool(
                    "demo__count_slowly", {"steps": 2}, progress_callback=on_progress
                )
                greeted = await client.call_tool("demo__ask_name", {})
                # The upstream announces this on no call's stream: it reaches the host on the session's.
                await client.call_tool("demo__add_tool", {"name": f"late_{uuid.uuid4().hex[:8]}"})
                await list_changed.wait()
    for result, text in ((echoed, "bridged"), (greeted, "Hello, Grace!")):
        block = result.content[0]
        assert isinstance(block, types.TextContent) and block.text == text
    assert not counted.is_error
    assert reported == [1, 2]


async def test_the_bridge_answers_the_call_in_flight_then_exits_when_the_host_closes_stdin(
    tmp_path: Path,
) -> None:
    config = copy_example(tmp_path)
    async with serving(config, free_port()) as served, bridging(served.url) as host:
        with anyio.fail_after(TIMEOUT):
            await host.initialize("closing-host")
            call = {"name": "demo__wait", "arguments": {"seconds": 1}}
            await host.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call})
            assert host.bridge.process.stdin is not None
            await host.bridge.process.stdin.aclose()
            answer = await host.answer(2)
            code = await host.bridge.process.wait()
    assert text_of(answer) == "waited"
    assert code == 0, host.bridge.log


async def test_the_bridge_initialises_again_with_the_hosts_own_handshake_after_the_gateway_restarts(
    tmp_path: Path,
) -> None:
    config = copy_example(tmp_path)
    port = free_port()
    async with bridging(f"http://127.0.0.1:{port}/mcp") as host:
        async with serving(config, port):
            await host.initialize("restarting-host")
            assert text_of(await host.echo(2, "before")) == "before"
        async with serving(config, port):  # the same port and database: a restarted gateway
            after = await host.echo(3, "after")
    assert text_of(after) == "after"
    # The new session is the host's: the bridge replayed its initialize, client info and all.
    sessions = await recorded_sessions(tmp_path / "mcpgw.db")
    assert [(s.client_name, s.client_version, s.call_count) for s in sessions] == [
        ("restarting-host", "7", 1),
        ("restarting-host", "7", 1),
    ]


async def test_the_bridge_answers_errors_while_the_gateway_is_down_and_recovers_when_it_is_back(
    tmp_path: Path,
) -> None:
    config = copy_example(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    async with bridging(url) as host:
        async with serving(config, port):
            await host.initialize("patient-host")
        refused = [await host.echo(request_id, "nobody home") for request_id in (2, 3)]
        async with serving(config, port):
            back = await host.echo(4, "back")
        assert host.bridge.process.returncode is None  # it kept running throughout
    for answer in refused:
        assert answer["error"]["code"] == GATEWAY_UNREACHABLE, answer
        assert f"the gateway at {url} is unreachable" in answer["error"]["message"]
    assert text_of(back) == "back"
    assert "Traceback" not in host.bridge.log, host.bridge.log
    assert len([line for line in host.bridge.log.splitlines() if "unreachable" in line]) == 1, host.bridge.log
