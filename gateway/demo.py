"""The bundled demo upstream MCP server.

A small but real MCP server (built on the SDK's `MCPServer`) that the gateway's
tests, examples and benchmarks put behind the gateway. It speaks both protocol
generations: the handshake era (2025-11-25, `initialize` + sessions) and the
stateless 2026-07-28 revision (per-request `_meta` envelope, `InputRequiredResult`
round trips instead of server-to-client requests).

Run it as::

    python -m gateway.demo                                    # stdio
    python -m gateway.demo --http --port 8000 [--host H]      # Streamable HTTP at /mcp

With `--http`, once the socket is listening the server prints one line
``READY http://<host>:<port>/mcp`` to stdout (so `--port 0` gives tests an
ephemeral port); `--sse` serves the legacy HTTP+SSE transport at /sse instead.
`--json-response` answers POSTs with `application/json` instead of SSE; `--stateless`
serves the handshake era without sessions.

Tools: echo, count_slowly (progress), log_levels (logging), ask_name
(elicitation), fail (isError), structured (structuredContent), sample_haiku
(sampling), name_roots (roots), wait (timeouts/cancellation), touch (resources/updated to
subscribers), add_tool (tools/list_changed), traceparent (echoes the W3C trace context it
received), crash (exits mid-call), readme_link (the readme as a resource link and embedded).
Also a `demo://readme` resource, a `demo://greeting/{name}` template, a `greet` prompt and
argument completion for it.
"""

from __future__ import annotations

import argparse
import os
import socket
import warnings
from collections.abc import Mapping
from typing import Annotated, Any, get_args

import anyio
import uvicorn
from mcp.server.context import ServerRequestContext
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
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types import (
    Completion,
    CompletionArgument,
    CompletionContext,
    ContentBlock,
    CreateMessageResult,
    EmbeddedResource,
    EmptyResult,
    ListRootsResult,
    LoggingLevel,
    PromptReference,
    ResourceLink,
    ResourceTemplateReference,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, Field

__all__ = ["NAMES", "NameForm", "Product", "build_app", "main", "mcp"]

mcp: MCPServer[Any] = MCPServer(
    "mcpgw-demo",
    version="0.1.0",
    instructions="Demo upstream for the mcpgw gateway: echo, progress, logging, elicitation, sampling.",
    log_level="WARNING",
)

_LEVELS: tuple[LoggingLevel, ...] = get_args(LoggingLevel)  # severity-ascending
_log_levels: dict[str | None, LoggingLevel] = {}  # logging/setLevel per client (handshake era)

NAMES = ("Ada", "Alan", "Alice", "Bob", "Barbara", "Carol", "Claude", "Dave", "Grace", "Linus")


class NameForm(BaseModel):
    """What `ask_name` elicits."""

    name: str = Field(description="Your name")


class Product(BaseModel):
    """Structured result of `structured`."""

    sum: int
    product: int


async def _ask_for_name() -> Elicit[NameForm]:
    return Elicit("What is your name?", NameForm)


async def _sample_haiku(topic: str) -> Sample:
    prompt = SamplingMessage(
        role="user", content=TextContent(type="text", text=f"Write a haiku about {topic}.")
    )
    return Sample([prompt], max_tokens=100)


@mcp.tool(description="Return the text unchanged.", structured_output=False)
def echo(text: str) -> str:
    return text


@mcp.tool(description="Count to `steps`, reporting progress at each step.", structured_output=False)
async def count_slowly(
    ctx: Context,
    steps: Annotated[int, Field(ge=0, le=1000, json_schema_extra={"x-mcp-header": "Steps"})] = 3,
) -> str:
    for i in range(1, steps + 1):
        await anyio.sleep(0.01)
        await ctx.report_progress(i, steps, f"step {i}/{steps}")
    return f"counted {steps}"


def _session_key(headers: Mapping[str, str] | None) -> str | None:
    """Which client a `logging/setLevel` applies to: the HTTP session id, or None (stdio: one client)."""
    return headers.get("mcp-session-id") if headers is not None else None


async def _set_level(ctx: ServerRequestContext[Any], params: SetLevelRequestParams) -> EmptyResult:
    # Handshake era only: at 2026-07-28 the client opts in per request via `_meta` instead.
    if len(_log_levels) >= 1024:
        _log_levels.pop(next(iter(_log_levels)))
    _log_levels[_session_key(getattr(ctx.request, "headers", None))] = params.level
    return EmptyResult()


# MCPServer has no public hook for this (deprecated) method; registering it also advertises `logging`.
mcp._lowlevel_server.add_request_handler("logging/setLevel", SetLevelRequestParams, _set_level)


@mcp.tool(
    description="Emit one log notification at each of debug, info, warning and error.",
    structured_output=False,
)
async def log_levels(ctx: Context) -> str:
    legacy = ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS
    floor = _log_levels.get(_session_key(ctx.headers), "debug") if legacy else "debug"
    with warnings.catch_warnings():
        # Logging is deprecated as of 2026-07-28 (SEP-2577); the demo still exercises it.
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        for level in ("debug", "info", "warning", "error"):
            # At 2026-07-28 the SDK itself drops levels the request did not opt in to.
            if _LEVELS.index(level) >= _LEVELS.index(floor):
                await ctx.log(level, f"{level} message", logger_name="demo")
    return "logged"


@mcp.tool(description="Ask the user for their name (elicitation) and greet them.", structured_output=False)
async def ask_name(answer: Annotated[ElicitationResult[NameForm], Resolve(_ask_for_name)]) -> str:
    if isinstance(answer, AcceptedElicitation):
        return f"Hello, {answer.data.name}!"
    return "no name given"


@mcp.tool(description="Always fails: the result has isError set.", structured_output=False)
def fail(message: str = "boom") -> str:
    raise ToolError(message)


@mcp.tool(description="Sum and product of two integers, as structured content.")
def structured(a: int, b: int) -> Product:
    return Product(sum=a + b, product=a * b)


@mcp.tool(description="Ask the host's LLM (sampling) for a haiku about `topic`.", structured_output=False)
async def sample_haiku(topic: str, sampled: Annotated[CreateMessageResult, Resolve(_sample_haiku)]) -> str:
    content = sampled.content
    return content.text if isinstance(content, TextContent) else f"<{content.type} content>"


async def _list_roots() -> ListRoots:
    return ListRoots()


@mcp.tool(description="Name the host's roots (roots/list).", structured_output=False)
async def name_roots(listed: Annotated[ListRootsResult, Resolve(_list_roots)]) -> str:
    return ", ".join(f"{root.name or '-'} at {root.uri}" for root in listed.roots) or "no roots"


@mcp.tool(description="Sleep `seconds`, then return 'waited'.", structured_output=False)
async def wait(seconds: float) -> str:
    await anyio.sleep(seconds)
    return "waited"


@mcp.tool(description="Return the W3C traceparent this request carried in _meta ('' if none).")
def traceparent(ctx: Context) -> str:
    meta: Any = ctx.request_context.meta or {}
    value = meta.get("traceparent") if isinstance(meta, Mapping) else getattr(meta, "traceparent", None)
    return value if isinstance(value, str) else ""


@mcp.tool(description="Exit this server process at once, mid-call (to see how a client copes with a crash).")
def crash() -> str:
    os._exit(3)


@mcp.resource("demo://readme", name="readme", description="About this server.", mime_type="text/plain")
def readme() -> str:
    return "mcpgw demo server: a small upstream used to exercise the gateway."


@mcp.tool(description="Point to the readme: a resource_link to demo://readme and the readme embedded.")
def readme_link() -> list[ContentBlock]:
    text = readme()
    return [
        ResourceLink(type="resource_link", uri="demo://readme", name="readme", mime_type="text/plain"),
        EmbeddedResource(
            type="resource",
            resource=TextResourceContents(uri="demo://readme", mime_type="text/plain", text=text),
        ),
    ]


@mcp.resource("demo://greeting/{name}", name="greeting", mime_type="text/plain")
def greeting(name: str) -> str:
    return f"Hello, {name}!"


# Handshake-era resource subscriptions: which sessions asked for updates to which URIs.
_subscribers: dict[str, set[str | None]] = {}


async def _subscribe(ctx: ServerRequestContext[Any], params: SubscribeRequestParams) -> EmptyResult:
    _subscribers.setdefault(str(params.uri), set()).add(_session_key(getattr(ctx.request, "headers", None)))
    return EmptyResult()


async def _unsubscribe(ctx: ServerRequestContext[Any], params: UnsubscribeRequestParams) -> EmptyResult:
    _subscribers.get(str(params.uri), set()).discard(_session_key(getattr(ctx.request, "headers", None)))
    return EmptyResult()


mcp._lowlevel_server.add_request_handler("resources/subscribe", SubscribeRequestParams, _subscribe)
mcp._lowlevel_server.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, _unsubscribe)


@mcp.tool(description="Mark `uri` as changed: its subscribers get notifications/resources/updated.")
async def touch(uri: str, ctx: Context) -> str:
    if _session_key(ctx.headers) in _subscribers.get(uri, set()):
        await ctx.request_context.session.send_resource_updated(uri)
    await ctx.notify_resource_updated(uri)
    return f"touched {uri}"


@mcp.tool(description="Add a tool named `name` (it echoes) and tell clients the tool list changed.")
async def add_tool(name: str, ctx: Context) -> str:
    mcp.add_tool(lambda text: text, name=name, description="Added at run time; echoes `text`.")
    await ctx.request_context.session.send_tool_list_changed()
    await ctx.notify_tools_changed()
    return f"added {name}"


@mcp.prompt(description="Greet someone by name.")
def greet(name: str) -> str:
    return f"Please greet {name} warmly."


async def _complete(
    ref: PromptReference | ResourceTemplateReference,
    argument: CompletionArgument,
    context: CompletionContext | None,
) -> Completion | None:
    if argument.name != "name":
        return None
    prefix = argument.value.lower()
    values = [n for n in NAMES if n.lower().startswith(prefix)]
    return Completion(values=values, total=len(values), has_more=False)


mcp.completion()(_complete)  # type: ignore[no-untyped-call]  # the SDK decorator is unannotated


def build_app(
    *, json_response: bool = False, stateless: bool = False, host: str = "127.0.0.1", sse: bool = False
) -> Any:
    """The Streamable HTTP ASGI app (endpoint `/mcp`), or with `sse` the legacy SSE app (`/sse`)."""
    if sse:
        return mcp.sse_app(host=host)
    return mcp.streamable_http_app(json_response=json_response, stateless_http=stateless, host=host)


async def _serve_http(host: str, port: int, *, json_response: bool, stateless: bool, sse: bool) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: only then does asyncio set TCP_NODELAY on accepted connections,
    # without which each small response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    bound = sock.getsockname()[1]
    app = build_app(json_response=json_response, stateless=stateless, host=host, sse=sse)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    url_host = f"[{host}]" if family == socket.AF_INET6 else host
    # Connections queue in the listen backlog until uvicorn accepts them, so the URL is usable now.
    print(f"READY http://{url_host}:{bound}/{'sse' if sse else 'mcp'}", flush=True)
    await server.serve(sockets=[sock])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--http", action="store_true", help="serve Streamable HTTP instead of stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=8000, help="0 picks a free port (printed on the READY line)"
    )
    parser.add_argument("--json-response", action="store_true", help="answer with JSON bodies instead of SSE")
    parser.add_argument("--stateless", action="store_true", help="handshake era without sessions")
    parser.add_argument("--sse", action="store_true", help="serve the legacy HTTP+SSE transport at /sse")
    args = parser.parse_args(argv)
    if args.http or args.sse:
        opts = {"json_response": args.json_response, "stateless": args.stateless, "sse": args.sse}
        anyio.run(lambda: _serve_http(args.host, args.port, **opts))
    else:
        mcp.run("stdio")


if __name__ == "__main__":
    main()
