"""Fake upstream channels for fast tests of the proxy core (router, proxy, host sessions).

The end-to-end suite runs real servers; these tests check the core's own rules (names, filters,
routing, recording, cancellation) in milliseconds. The fakes stand in for the transport only:
a `FakeUpstream` answers `initialize`, the list methods from its items, and `tools/call` by
running a handler; the host session, router and proxy under test are the real ones.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from gateway.config import ToolFilter, UpstreamConfig
from gateway.core.host_session import HostSession
from gateway.principal import Principal
from gateway.protocol.jsonrpc import JSONObject, dumps, error, result
from gateway.recording.recorder import CallRecord, TaskEnded
from gateway.upstream.channel import MessageSink, Unsolicited
from gateway.upstream.connector import Handshake, ModernUpstream, UpstreamSession
from gateway.upstream.http import HeaderSource
from store import SessionEnd, SessionStart

Tool = Callable[[JSONObject, MessageSink | None], Awaitable[JSONObject]]


def text(value: str) -> JSONObject:
    return {"content": [{"type": "text", "text": value}]}


async def echo(arguments: JSONObject, sink: MessageSink | None) -> JSONObject:
    return text(str(arguments.get("text", "")))


@dataclass
class FakeUpstream:
    """One upstream: its tools (name -> handler), and every message it was sent."""

    name: str
    tools: dict[str, Tool] = field(default_factory=lambda: {"echo": echo})
    prefix: str | None = None
    filter: ToolFilter = field(default_factory=ToolFilter)
    received: list[JSONObject] = field(default_factory=list)

    @property
    def config(self) -> UpstreamConfig:
        prefix = f"{self.name}__" if self.prefix is None else self.prefix
        return UpstreamConfig(
            name=self.name, transport="stdio", prefix=prefix, command=("fake",), tools=self.filter
        )

    async def modern(self, credential: HeaderSource | None = None) -> ModernUpstream | None:
        return None

    async def open_session(
        self, handshake: Handshake, unsolicited: Unsolicited, credential: HeaderSource | None = None
    ) -> UpstreamSession:
        return UpstreamSession(
            self.config, _FakeChannel(self), handshake.protocol_version, {"tools": {}}, {}, None
        )


class _FakeChannel:
    def __init__(self, upstream: FakeUpstream) -> None:
        self._upstream = upstream
        self.closed = False

    async def request(self, message: JSONObject, sink: MessageSink | None) -> JSONObject:
        dumps(message)  # what every real channel does first: a message it cannot encode stops here
        self._upstream.received.append(message)
        params: dict[str, Any] = message.get("params") or {}
        if message["method"] == "tools/list":
            return result(
                message["id"], {"tools": [{"name": n, "inputSchema": {}} for n in self._upstream.tools]}
            )
        if message["method"] == "tools/call":
            tool = self._upstream.tools.get(params.get("name", ""))
            if tool is None:
                return error(message["id"], -32602, f"Unknown tool: {params.get('name')}")
            return result(message["id"], await tool(params.get("arguments") or {}, sink))
        return error(message["id"], -32601, f"Method not found: {message['method']}")

    async def notify(self, message: JSONObject) -> None:
        self._upstream.received.append(message)

    async def respond(self, message: JSONObject) -> None:
        self._upstream.received.append(message)

    async def aclose(self) -> None:
        self.closed = True


class ListRecorder:
    """A recorder that keeps what it is given, in memory."""

    def __init__(self) -> None:
        self.calls: list[CallRecord] = []
        self.task_ends: list[TaskEnded] = []

    async def session_started(self, start: SessionStart) -> None:
        return None

    async def session_ended(self, end: SessionEnd) -> None:
        return None

    async def record(self, call: CallRecord) -> None:
        self.calls.append(call)

    async def task_ended(self, end: TaskEnded) -> None:
        self.task_ends.append(end)


def host_session(upstreams: Mapping[str, FakeUpstream], principal: Principal | None = None) -> HostSession:
    who = principal or Principal("org", "key", None, False)
    handshake = Handshake("2025-11-25", {}, {"name": "unit", "version": "1"})
    return HostSession("session", who, handshake, upstreams, idle_s=60.0)


async def never(arguments: JSONObject, sink: MessageSink | None) -> JSONObject:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")
