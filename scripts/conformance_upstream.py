"""An MCP server with the tools, resources and prompts the MCP conformance suite asks for.

`scripts/conformance` runs the suite against this server directly and through mcpgw, and
compares. No published package serves the suite's fixture names (`test_simple_text`,
`test://static-text`, `test_prompt_with_arguments`, ...), so this one does, on the `mcp` SDK
mcpgw already depends on; it speaks the handshake era and 2026-07-28 alike, as the SDK does,
and serves the tasks extension (`conformance_tasks.py`: the SDK has no tasks store).
Written from the suite's scenario descriptions; it is a fixture, not part of mcpgw.

    python scripts/conformance_upstream.py [--port 0]

prints ``READY http://127.0.0.1:<port>/mcp`` once it listens.
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import sys
from typing import Any

import anyio
import uvicorn
from conformance_tasks import TasksExtension, add_task_tools
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer, RequestStateSecurity
from mcp.server.mcpserver.prompts.base import Message, Prompt, UserMessage
from mcp.shared.exceptions import MCPError
from mcp_types import (
    AudioContent,
    Completion,
    CompletionArgument,
    CompletionContext,
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    InputRequest,
    InputRequiredResult,
    ListRootsRequest,
    ListRootsResult,
    PromptReference,
    ResourceTemplateReference,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from mcp_types.jsonrpc import MISSING_REQUIRED_CLIENT_CAPABILITY
from pydantic import BaseModel, Field

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="

tasks = TasksExtension()
server: MCPServer[Any] = MCPServer(
    "mcpgw-conformance-upstream",
    version="0.1.0",
    log_level="WARNING",
    # A fixed key: the fixture runs on loopback for the length of one comparison.
    request_state_security=RequestStateSecurity(keys=[b"mcpgw conformance fixture request-state key"]),
    extensions=[tasks],
)
add_task_tools(server)


def _text(text: str) -> TextContent:
    return TextContent(type="text", text=text)


def _ask(message: str, field: str = "name", kind: str = "string") -> ElicitRequest:
    schema = {"type": "object", "properties": {field: {"type": kind}}, "required": [field]}
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def _sample(prompt: str, max_tokens: int = 100) -> CreateMessageRequest:
    messages = [SamplingMessage(role="user", content=_text(prompt))]
    return CreateMessageRequest(params=CreateMessageRequestParams(messages=messages, max_tokens=max_tokens))


def _answer(responses: dict[str, Any] | None, key: str, field: str) -> Any:
    answer = (responses or {}).get(key)
    return answer.content.get(field) if isinstance(answer, ElicitResult) and answer.content else None


# Content of every kind.


@server.tool(description="Returns one text block.")
def test_simple_text() -> str:
    return "This is a simple text response for testing."


@server.tool(description="Returns one PNG image block.")
def test_image_content() -> list[ImageContent]:
    return [ImageContent(type="image", data=PNG, mime_type="image/png")]


@server.tool(description="Returns one WAV audio block.")
def test_audio_content() -> list[AudioContent]:
    return [AudioContent(type="audio", data=WAV, mime_type="audio/wav")]


def _embedded(uri: str, text: str, mime_type: str = "text/plain") -> EmbeddedResource:
    contents = TextResourceContents(uri=uri, mime_type=mime_type, text=text)
    return EmbeddedResource(type="resource", resource=contents)


@server.tool(description="Returns one embedded resource.")
def test_embedded_resource() -> list[EmbeddedResource]:
    return [_embedded("test://embedded-resource", "This is an embedded resource content.")]


@server.tool(description="Returns text, an image and an embedded resource.")
def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
    return [
        _text("Multiple content types test:"),
        ImageContent(type="image", data=PNG, mime_type="image/png"),
        _embedded("test://mixed-content-resource", '{"test": "data", "value": 123}', "application/json"),
    ]


@server.tool(description="Always fails.")
def test_error_handling() -> str:
    raise RuntimeError("This tool intentionally returns an error for testing")


# Notifications during a call, and server-to-client requests (handshake era).


@server.tool(description="Logs three info messages while it runs.")
async def test_tool_with_logging(ctx: Context) -> str:
    for step in ("started", "processing data", "completed"):
        await ctx.log("info", f"Tool execution {step}")
    return "Tool with logging executed successfully"


@server.tool(description="Logs at every level (the 2026-07-28 per-request log level decides what is sent).")
async def test_logging_tool(ctx: Context) -> str:
    for level in ("debug", "info", "warning", "error"):
        await ctx.log(level, f"{level} message")
    return "logged"


@server.tool(description="Reports progress, then finishes: its response stream carries notifications only.")
async def test_streaming_elicitation(ctx: Context) -> str:
    await ctx.report_progress(progress=50, total=100, message="halfway")
    return "Streaming complete"


@server.tool(description="Reports progress 0, 50 and 100 of 100.")
async def test_tool_with_progress(ctx: Context) -> str:
    for done in (0, 50, 100):
        await ctx.report_progress(progress=done, total=100, message=f"Completed step {done} of 100")
    meta = ctx.request_context.meta
    return str(meta.get("progress_token") if meta else 0)


@server.tool(description="Asks the client's model (sampling) to answer `prompt`.")
async def test_sampling(prompt: str, ctx: Context) -> str:
    result = await ctx.session.create_message(  # a handshake-era request
        messages=[SamplingMessage(role="user", content=_text(prompt))],
        max_tokens=100,
        related_request_id=ctx.request_id,
    )
    return f"LLM response: {result.content.text if result.content.type == 'text' else 'No response'}"


class _Reply(BaseModel):
    response: str = Field(description="User's response")


@server.tool(description="Asks the user (elicitation) `message`.")
async def test_elicitation(message: str, ctx: Context) -> str:
    result = await ctx.elicit(message=message, schema=_Reply)
    content = result.data.model_dump_json() if result.action == "accept" else "{}"
    return f"User response: action={result.action}, content={content}"


class _Defaults(BaseModel):
    name: str = Field(default="John Doe", description="User name")
    age: int = Field(default=30, description="User age")
    score: float = Field(default=95.5, description="User score")
    status: str = Field(
        default="active",
        description="User status",
        json_schema_extra={"enum": ["active", "inactive", "pending"]},
    )
    verified: bool = Field(default=True, description="Verification status")


@server.tool(description="Elicits a form whose every field has a default (SEP-1034).")
async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
    result = await ctx.elicit(message="Please provide user information", schema=_Defaults)
    content = result.data.model_dump_json() if result.action == "accept" else "{}"
    return f"Elicitation result: action={result.action}, content={content}"


def _options(*pairs: tuple[str, str]) -> Any:  # JSON for a schema
    return [{"const": value, "title": title} for value, title in pairs]


class _Enums(BaseModel):
    untitledSingle: str = Field(
        description="Simple enum without titles",
        json_schema_extra={"enum": ["active", "inactive", "pending"]},
    )
    titledSingle: str = Field(
        description="Enum with titled options (oneOf)",
        json_schema_extra={
            "oneOf": _options(
                ("low", "Low Priority"), ("medium", "Medium Priority"), ("high", "High Priority")
            )
        },
    )
    untitledMulti: list[str] = Field(
        description="Multi-select without titles",
        json_schema_extra={"items": {"type": "string", "enum": ["read", "write", "execute"]}},
    )
    titledMulti: list[str] = Field(
        description="Multi-select with titled options",
        json_schema_extra={
            "items": {
                "anyOf": _options(("feature", "New Feature"), ("bug", "Bug Fix"), ("docs", "Documentation"))
            }
        },
    )
    legacyEnum: str = Field(
        description="Legacy enum with enumNames",
        json_schema_extra={
            "enum": ["small", "medium", "large"],
            "enumNames": ["Small Size", "Medium Size", "Large Size"],
        },
    )


@server.tool(description="Elicits every enum form (SEP-1330).")
async def test_elicitation_sep1330_enums(ctx: Context) -> str:
    result = await ctx.elicit(message="Please select values using different enum schema types", schema=_Enums)
    content = result.data.model_dump_json() if result.action == "accept" else "{}"
    return f"Elicitation completed: action={result.action}, content={content}"


@server.tool(description="Needs the client's sampling capability; a protocol error without it.")
async def test_missing_capability(ctx: Context) -> str:
    capabilities = ctx.session.client_capabilities
    if capabilities is None or capabilities.sampling is None:
        raise MCPError(
            code=MISSING_REQUIRED_CLIENT_CAPABILITY,
            message="This tool requires the client 'sampling' capability",
            data={"requiredCapabilities": {"sampling": {}}},
        )
    return "Client declared sampling capability; proceeding."


@server.tool(description="Echoes `region`, which the client mirrors into the Mcp-Param-Region header.")
def test_x_mcp_header(
    region: str = Field(default="<none>", json_schema_extra={"x-mcp-header": "Region"}),
) -> str:
    return f"region={region}"


# 2026-07-28: InputRequiredResult rounds instead of server-to-client requests.


@server.tool(description="One elicitation round.")
async def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
    name = _answer(ctx.input_responses, "user_name", "name")
    if name is not None:
        return f"Hello, {name}!"
    return InputRequiredResult(input_requests={"user_name": _ask("What is your name?")})


@server.tool(description="One sampling round.")
async def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
    answer = (ctx.input_responses or {}).get("capital_question")
    if isinstance(answer, CreateMessageResult):
        return f"Model said: {answer.content.text if answer.content.type == 'text' else '?'}"
    return InputRequiredResult(input_requests={"capital_question": _sample("What is the capital of France?")})


@server.tool(description="One roots/list round.")
async def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
    answer = (ctx.input_responses or {}).get("client_roots")
    if isinstance(answer, ListRootsResult):
        return f"Client exposed {len(answer.roots)} root(s)."
    return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})


@server.tool(description="One round whose requestState must come back unchanged.")
async def test_input_required_result_request_state(ctx: Context) -> str | InputRequiredResult:
    if "confirm" in (ctx.input_responses or {}) and ctx.request_state == "request-state-nonce":
        return "state-ok: confirmation received"
    ask = _ask("Please confirm", "ok", "boolean")
    return InputRequiredResult(input_requests={"confirm": ask}, request_state="request-state-nonce")


@server.tool(description="One round asking for an elicitation, a sampling and the roots at once.")
async def test_input_required_result_multiple_inputs(ctx: Context) -> str | InputRequiredResult:
    if {"user_name", "greeting", "client_roots"} <= (ctx.input_responses or {}).keys():
        return "All inputs received."
    requests: dict[str, InputRequest] = {
        "user_name": _ask("What is your name?"),
        "greeting": _sample("Generate a greeting", 50),
        "client_roots": ListRootsRequest(),
    }
    return InputRequiredResult(input_requests=requests, request_state="multiple-inputs")


@server.tool(description="Three rounds: a name, then a colour, then the answer.")
async def test_input_required_result_multi_round(ctx: Context) -> str | InputRequiredResult:
    state = json.loads(ctx.request_state) if ctx.request_state else {"round": 0}
    responses = ctx.input_responses
    if state["round"] == 1 and "step1" in (responses or {}):
        name = _answer(responses, "step1", "name")
        ask = _ask("Step 2: What is your favorite color?", "color")
        return InputRequiredResult(
            input_requests={"step2": ask}, request_state=json.dumps({"round": 2, "name": name})
        )
    if state["round"] == 2 and "step2" in (responses or {}):
        return f"{state.get('name')} likes {_answer(responses, 'step2', 'color')}."
    # First round, or an answer out of order: start again.
    ask = _ask("Step 1: What is your name?")
    return InputRequiredResult(input_requests={"step1": ask}, request_state=json.dumps({"round": 1}))


@server.tool(description="One round; the SDK refuses a requestState that was tampered with.")
async def test_input_required_result_tampered_state(ctx: Context) -> str | InputRequiredResult:
    if ctx.request_state is not None:
        return f"state-ok: {ctx.request_state}"
    ask = _ask("Please confirm", "ok", "boolean")
    return InputRequiredResult(input_requests={"confirm": ask}, request_state="round-1")


@server.tool(description="Asks only for what the client declared it can answer.")
async def test_input_required_result_capabilities(ctx: Context) -> InputRequiredResult:
    capabilities = ctx.client_capabilities
    requests: dict[str, InputRequest] = {}
    if capabilities is None or capabilities.sampling is not None:
        requests["sample"] = _sample("Say hello", 50)
    if capabilities is None or capabilities.elicitation is not None:
        requests["ask"] = _ask("What is your name?")
    return InputRequiredResult(input_requests=requests, request_state="capability-gated")


# List changes, announced to subscriptions/listen streams (2026-07-28) and sessions alike.


def _dynamic() -> str:
    return "dynamic"


@server.tool(description="Adds and removes a tool, then says the tool list changed.")
async def test_trigger_tool_change(ctx: Context) -> str:
    server.add_tool(_dynamic, name="test_dynamic_tool")
    server.remove_tool("test_dynamic_tool")
    await ctx.notify_tools_changed()
    return "tool list changed"


@server.tool(description="Adds and removes a prompt, then says the prompt list changed.")
async def test_trigger_prompt_change(ctx: Context) -> str:
    server.add_prompt(Prompt.from_function(_dynamic, name="test_dynamic_prompt", description="dynamic"))
    server.remove_prompt("test_dynamic_prompt")
    await ctx.notify_prompts_changed()
    return "prompt list changed"


# Resources.


@server.resource("test://static-text", description="A static text resource.")
def static_text() -> str:
    return "This is the content of the static text resource."


@server.resource("test://static-binary", mime_type="image/png", description="A static binary resource.")
def static_binary() -> bytes:
    return base64.b64decode(PNG)


@server.resource("test://template/{id}/data", mime_type="application/json", description="A template.")
def template_data(id: str) -> str:
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@server.resource("test://watched-resource", description="A resource clients may subscribe to.")
def watched() -> str:
    return "Watched resource content"


_subscriptions: set[str] = set()


async def _subscribe(ctx: ServerRequestContext[Any], params: SubscribeRequestParams) -> EmptyResult:
    _subscriptions.add(str(params.uri))
    return EmptyResult()


async def _unsubscribe(ctx: ServerRequestContext[Any], params: UnsubscribeRequestParams) -> EmptyResult:
    _subscriptions.discard(str(params.uri))
    return EmptyResult()


async def _set_level(ctx: ServerRequestContext[Any], params: SetLevelRequestParams) -> EmptyResult:
    return EmptyResult()


# Handshake-era methods MCPServer has no decorator for; registering them advertises them.
for _method, _params, _handler in (
    ("resources/subscribe", SubscribeRequestParams, _subscribe),
    ("resources/unsubscribe", UnsubscribeRequestParams, _unsubscribe),
    ("logging/setLevel", SetLevelRequestParams, _set_level),
):
    server._lowlevel_server.add_request_handler(_method, _params, _handler)  # type: ignore[arg-type]


# Prompts.


@server.prompt(description="A prompt without arguments.")
def test_simple_prompt() -> list[Message]:
    return [UserMessage(_text("This is a simple prompt for testing."))]


@server.prompt(description="A prompt with two required arguments.")
def test_prompt_with_arguments(arg1: str, arg2: str) -> list[Message]:
    return [UserMessage(_text(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"))]


@server.prompt(description="A prompt embedding the resource it is given.")
def test_prompt_with_embedded_resource(resourceUri: str) -> list[Message]:
    embedded = _embedded(resourceUri, "Embedded resource content for testing.")
    return [UserMessage(embedded), UserMessage(_text("Please process the embedded resource above."))]


@server.prompt(description="A prompt with an image.")
def test_prompt_with_image() -> list[Message]:
    image = ImageContent(type="image", data=PNG, mime_type="image/png")
    return [UserMessage(image), UserMessage(_text("Please analyze the image above."))]


@server.prompt(description="A prompt that first asks the user for context (InputRequiredResult).")
async def test_input_required_result_prompt(ctx: Context) -> list[Message] | InputRequiredResult:
    context = _answer(ctx.input_responses, "user_context", "context")
    if context is not None:
        return [UserMessage(_text(f"Use the following context: {context}"))]
    ask = _ask("What context should the prompt use?", "context")
    return InputRequiredResult(input_requests={"user_context": ask})


async def _complete(
    ref: PromptReference | ResourceTemplateReference,
    argument: CompletionArgument,
    context: CompletionContext | None,
) -> Completion:
    return Completion(values=[], total=0, has_more=False)


server.completion()(_complete)  # type: ignore[no-untyped-call]  # the SDK decorator is unannotated


async def _serve(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    app = server.streamable_http_app(host="127.0.0.1")
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    print(f"READY http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    async with anyio.create_task_group() as task_group:
        tasks.task_group = task_group  # where tasks run, beside the requests that poll them
        await uvicorn_server.serve(sockets=[sock])
        task_group.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see the READY line)")
    args = parser.parse_args(argv)
    anyio.run(_serve, args.port)


if __name__ == "__main__":
    main(sys.argv[1:])
