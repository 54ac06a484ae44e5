"""Small in-process SDK servers for tests that need an upstream with particular names.

They are real `MCPServer`s served over Streamable HTTP by uvicorn in the test process.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import anyio
from mcp.server.mcpserver import (
    AcceptedElicitation,
    Context,
    Elicit,
    ElicitationResult,
    ListRoots,
    MCPServer,
    Resolve,
    Sample,
)
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp_types import (
    CreateMessageResult,
    JSONRPCMessage,
    ListRootsResult,
    SamplingMessage,
    TextContent,
    ToolListChangedNotification,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.harness import serve_asgi


def catalogue_server(name: str) -> MCPServer:
    """A server with a `search` tool (names collide across instances) and a tool of its own."""
    server: MCPServer = MCPServer(name)

    @server.tool(description="Search this catalogue.", structured_output=False)
    def search(query: str) -> str:
        return f"{name} found {query}"

    @server.tool(name=f"{name}_only", description="A tool only this server has.", structured_output=False)
    def only() -> str:
        return f"only {name}"

    return server


@asynccontextmanager
async def serve_mcp(server: MCPServer) -> AsyncIterator[str]:
    """Serve `server` over Streamable HTTP on an ephemeral port; yield its /mcp URL."""
    async with serve_asgi(server.streamable_http_app()) as base_url:
        yield f"{base_url}/mcp"


class _RequireKey:
    """Refuse (401) any request whose `X-Api-Key` is not one of `owners`, as an API-key MCP server does."""

    def __init__(self, app: ASGIApp, owners: Mapping[str, str]) -> None:
        self.app = app
        self.owners = owners
        self.seen: list[dict[str, str]] = []  # every request's headers, to check what reached us

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            self.seen.append(headers)
            if headers.get("x-api-key") not in self.owners:
                await PlainTextResponse("bad key", 401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


@dataclass
class KeyedUpstream:
    url: str
    seen: list[dict[str, str]]


@asynccontextmanager
async def serve_keyed_upstream(owners: Mapping[str, str]) -> AsyncIterator[KeyedUpstream]:
    """An MCP server that needs `X-Api-Key` (key -> owner); its `whoami` tool names the owner."""
    server: MCPServer = MCPServer("keyed")

    @server.tool(description="Whose API key this request carries.", structured_output=False)
    def whoami(ctx: Context) -> str:
        request = ctx.request_context.request
        assert isinstance(request, Request)
        return owners[request.headers["x-api-key"]]

    guarded = _RequireKey(server.streamable_http_app(), owners)
    async with serve_asgi(guarded) as base_url:
        yield KeyedUpstream(f"{base_url}/mcp", guarded.seen)


def changing_server() -> MCPServer:
    """A server whose `add_tool` adds a tool and announces it to every kind of listener: 2026-07-28
    `subscriptions/listen` streams, and handshake-era sessions either on their GET stream or, with
    `related`, on the calling request's own response stream (as servers that tie every
    notification to the request that caused it do)."""
    server: MCPServer = MCPServer("changing")

    @server.tool(description="Add an echo tool named `name` and say the tool list changed.")
    async def add_tool(name: str, ctx: Context, related: bool = False) -> str:
        server.add_tool(lambda text: text, name=name, description="Added at run time; echoes `text`.")
        if related:
            await ctx.session.send_notification(
                ToolListChangedNotification(), related_request_id=ctx.request_id
            )
        else:
            await ctx.session.send_tool_list_changed()
        await ctx.notify_tools_changed()
        return f"added {name}"

    return server


class _HandshakeOnly:
    """An upstream that predates 2026-07-28: a request in that revision is refused as an older SDK
    server refuses it (400, no session), so the gateway reaches it through a handshake-era session.
    With `slow_stream_s`, its GET stream takes that long to open, as a busy server's may.

    A filter in front of a real server, because no installed server can be told to drop a revision
    or to be slow to open a stream.
    """

    def __init__(self, app: ASGIApp, slow_stream_s: float) -> None:
        self.app = app
        self.slow_stream_s = slow_stream_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            if headers.get("mcp-protocol-version") in MODERN_PROTOCOL_VERSIONS:
                error = {"code": -32600, "message": "Bad Request: Missing session ID"}
                await JSONResponse({"jsonrpc": "2.0", "id": None, "error": error}, 400)(scope, receive, send)
                return
            if scope["method"] == "GET" and self.slow_stream_s:
                # The fault under test is a late stream: this delay is the fault, not a wait.
                await anyio.sleep(self.slow_stream_s)
        await self.app(scope, receive, send)


class ModernOnly:
    """An upstream of 2026-07-28 only: a handshake-era request (no 2026-07-28 protocol version
    header) is refused (400), as a server that never spoke the handshake era refuses `initialize`.
    A filter in front of a real server, because no installed server can be told to drop a revision."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            if headers.get("mcp-protocol-version") not in MODERN_PROTOCOL_VERSIONS:
                error = {"code": -32600, "message": "Bad Request: this server speaks 2026-07-28 only"}
                await JSONResponse({"jsonrpc": "2.0", "id": None, "error": error}, 400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


@asynccontextmanager
async def serve_modern_only(server: MCPServer) -> AsyncIterator[str]:
    """Serve `server` over Streamable HTTP in 2026-07-28 only; yield its /mcp URL."""
    async with serve_asgi(ModernOnly(server.streamable_http_app())) as base_url:
        yield f"{base_url}/mcp"


class Recording:
    """In front of a real server: every POSTed JSON-RPC message, in order, to check what the
    gateway sent (a request's id, its params) where no server reports it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.posted: list[dict[str, object]] = []
        self.headers: list[dict[str, str]] = []  # each posted message's request headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            self.posted.append(parsed)
            self.headers.append(
                {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            )
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


@asynccontextmanager
async def serve_recorded_modern_only(server: MCPServer) -> AsyncIterator[tuple[str, Recording]]:
    """`serve_modern_only`, with what the upstream was sent: its /mcp URL and the recording."""
    recording = Recording(server.streamable_http_app())
    async with serve_asgi(ModernOnly(recording)) as base_url:
        yield f"{base_url}/mcp", recording


class _Name(BaseModel):
    name: str


async def _ask_name() -> Elicit[_Name]:
    return Elicit("What is your name?", _Name)


async def _ask_model(topic: str) -> Sample:
    prompt = SamplingMessage(role="user", content=TextContent(type="text", text=f"A haiku about {topic}."))
    return Sample([prompt], max_tokens=50)


async def _ask_roots() -> ListRoots:
    return ListRoots()


def asking_server() -> MCPServer:
    """Tools that need the host mid-call: an elicitation, a sampling, the roots, and all three.
    In the handshake era the SDK asks with server-to-client requests; in 2026-07-28 it answers
    `input_required` and reads the answers from the retried call."""
    server: MCPServer = MCPServer("asking")

    @server.tool(description="Greets the user by the name they give.", structured_output=False)
    async def greet_user(answer: Annotated[ElicitationResult[_Name], Resolve(_ask_name)]) -> str:
        return f"Hello, {answer.data.name}!" if isinstance(answer, AcceptedElicitation) else "Hello, nobody."

    @server.tool(description="The host's model writes a haiku.", structured_output=False)
    async def haiku(topic: str, sampled: Annotated[CreateMessageResult, Resolve(_ask_model)]) -> str:
        content = sampled.content
        return content.text if isinstance(content, TextContent) else "?"

    @server.tool(description="Counts the host's roots.", structured_output=False)
    async def count_roots(listed: Annotated[ListRootsResult, Resolve(_ask_roots)]) -> str:
        return f"{len(listed.roots)} root(s): " + ", ".join(str(root.uri) for root in listed.roots)

    @server.tool(description="Asks all three at once.", structured_output=False)
    async def all_three(
        answer: Annotated[ElicitationResult[_Name], Resolve(_ask_name)],
        sampled: Annotated[CreateMessageResult, Resolve(_ask_model)],
        listed: Annotated[ListRootsResult, Resolve(_ask_roots)],
        topic: str = "frogs",
    ) -> str:
        name = answer.data.name if isinstance(answer, AcceptedElicitation) else "nobody"
        text = sampled.content.text if isinstance(sampled.content, TextContent) else "?"
        return f"{name}; {text}; {len(listed.roots)} root(s)"

    return server


@asynccontextmanager
async def serve_handshake_only(server: MCPServer, *, slow_stream_s: float = 0.0) -> AsyncIterator[str]:
    """Serve `server` over Streamable HTTP in the handshake era only; yield its /mcp URL."""
    async with serve_asgi(_HandshakeOnly(server.streamable_http_app(), slow_stream_s)) as base_url:
        yield f"{base_url}/mcp"


# A tool schema in JSON Schema 2020-12 with the keywords SEP-1613 and SEP-2106 name (the
# conformance suite's `json-schema-2020-12-preservation` fixture): a host must receive it as is.
RICH_SCHEMA: dict[str, object] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


def rich_schema_server() -> MCPServer:
    """A server whose `contact` tool declares RICH_SCHEMA as its input schema."""
    server: MCPServer = MCPServer("rich")

    @server.tool(description="Takes a contact.", structured_output=False)
    def contact(name: str = "", phone: str = "", email: str = "") -> str:
        return f"contact {name}"

    tool = server._tool_manager.get_tool("contact")  # the SDK derives schemas; this one is given
    assert tool is not None
    tool.parameters = json.loads(json.dumps(RICH_SCHEMA))
    return server


def shelf_server() -> MCPServer:
    """A server with a `shelf://book/{title}` template that has only the book titled `known`:
    any other title is the SDK's resource-not-found error (-32602, `data: {uri}`)."""
    server: MCPServer = MCPServer("shelf")

    @server.resource("shelf://book/{title}", name="book", mime_type="text/plain")
    def book(title: str) -> str:
        if title != "known":
            raise ResourceNotFoundError(f"no book titled {title!r}")
        return "a known book"

    return server


class _Faulty:
    """In front of a real server: a `tools/call` of `boom`, `cut`, `trickle`, `stray` or
    `stray_stream` misbehaves.

    `boom` answers HTTP 500; `cut` starts an event stream and drops the connection mid-response;
    `trickle` starts an event stream and sends only keep-alive comments, a few a second, forever;
    `stray` answers with a JSON body under an id it was never sent (`stray_id_of(id)`, the id a
    host's previous request would have: another upstream's call); `stray_stream` starts an
    event stream with three such answers ("not yours"), then answers the call ("yours").
    Everything else reaches the server. A filter, because no real server fails on request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        faults = (b"boom", b"cut", b"trickle", b"stray", b"stray_stream")
        fault = next((name for name in faults if b'"name":"%s"' % name in body), None)
        if fault is None:
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
            return
        if fault == b"boom":
            await PlainTextResponse("upstream exploded", 500)(scope, receive, send)
            return
        request_id = json.loads(body)["id"]
        if fault == b"stray":
            await JSONResponse(_answer(stray_id_of(request_id), "not yours"))(scope, receive, send)
            return
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
        await send(start)
        if fault == b"cut":
            await send({"type": "http.response.body", "body": b"event: message\ndata: {", "more_body": True})
            raise ConnectionAbortedError("the fault under test: a response cut off mid-stream")
        if fault == b"stray_stream":
            answers = [_answer(stray_id_of(request_id), "not yours")] * 3 + [_answer(request_id, "yours")]
            events = b"".join(b"event: message\ndata: %s\n\n" % json.dumps(a).encode() for a in answers)
            await send({"type": "http.response.body", "body": events, "more_body": False})
            return

        async def trickle() -> None:
            while True:  # the fault is the pace, not synchronisation
                await send({"type": "http.response.body", "body": b": still here\n\n", "more_body": True})
                await anyio.sleep(0.2)

        async with anyio.create_task_group() as tg:  # until the gateway gives up on it
            tg.start_soon(trickle)
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()


def stray_id_of(request_id: object) -> object:
    """The id `stray` answers a request with: one it was never sent."""
    return request_id - 1 if isinstance(request_id, int) else f"not-{request_id}"


def _answer(request_id: object, text: str) -> dict[str, object]:
    return {"jsonrpc": "2.0", "id": request_id, "result": {"content": [{"type": "text", "text": text}]}}


def faulty_server() -> MCPServer:
    server: MCPServer = MCPServer("faulty")

    @server.tool(description="Return the text unchanged.", structured_output=False)
    def echo(text: str) -> str:
        return text

    for name in ("boom", "cut", "trickle", "stray", "stray_stream"):
        server.add_tool(lambda: "never", name=name, description=f"Fails: {name}.")
    return server


@asynccontextmanager
async def serve_faulty() -> AsyncIterator[str]:
    """`faulty_server()` behind `_Faulty`, over Streamable HTTP; yield its /mcp URL."""
    async with serve_asgi(_Faulty(faulty_server().streamable_http_app())) as base_url:
        yield f"{base_url}/mcp"


class MemoryEventStore(EventStore):
    """Every event an SDK server sends, kept so that a stream it closed can be resumed
    (`Last-Event-ID`): what the SDK's resumability needs, and no more."""

    def __init__(self) -> None:
        self._events: list[tuple[str, str, JSONRPCMessage | None]] = []  # (stream, event id, message)

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        event_id = str(len(self._events) + 1)
        self._events.append((stream_id, event_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        ids = [event_id for _, event_id, _m in self._events]
        found = ids.index(last_event_id) if last_event_id in ids else None
        if found is None:
            return None
        stream = self._events[found][0]
        for stream_id, event_id, message in self._events[found + 1 :]:
            if stream_id == stream and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream


def resuming_server(retry_ms: int) -> tuple[MCPServer, ASGIApp, list[float]]:
    """A handshake-era server whose `interrupted` tool closes its response stream before it
    answers (SEP-1699: the server said `retry: retry_ms` in its priming event), so the answer
    reaches only a client that resumes the stream with `Last-Event-ID`. The list gets the
    monotonic time at which each such stream was closed."""
    server: MCPServer = MCPServer("resuming")
    closed: list[float] = []

    @server.tool(description="Answers after closing the stream it was asked on.", structured_output=False)
    async def interrupted(ctx: Context) -> str:
        closed.append(time.monotonic())
        await ctx.close_sse_stream()
        return "finished after the stream was resumed"

    app = server.streamable_http_app(event_store=MemoryEventStore(), retry_interval=retry_ms)
    return server, _HandshakeOnly(app, 0.0), closed
