"""Drive the bundled demo server (`gateway.demo`) directly with the SDK client, no gateway.

Every behaviour runs over stdio and Streamable HTTP, in the handshake era
(`mode="legacy"`) and the stateless 2026-07-28 revision.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext, ElicitationFnT
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

from tests.harness import ROOT, start_demo_http, stop_process

MODES = ["legacy", "2026-07-28"]
CALL_TIMEOUT = 20.0

Target = StdioServerParameters | str


@pytest.fixture(scope="module")
async def demo_json_url() -> AsyncIterator[str]:
    proc, url = await start_demo_http("--json-response")
    yield url
    await stop_process(proc)


@pytest.fixture(params=["stdio", "http"])
def target(request: pytest.FixtureRequest) -> Target:
    if request.param == "stdio":
        return StdioServerParameters(
            command=sys.executable, args=["-m", "gateway.demo"], cwd=ROOT, env={"PYTHONPATH": str(ROOT)}
        )
    url: str = request.getfixturevalue("demo_http_url")  # the session's demo, from conftest
    return url


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


def _text(result: types.CallToolResult) -> str:
    assert len(result.content) == 1
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


class _Collector:
    """Collects callback payloads; `wait_for(n)` returns once n have arrived."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = anyio.Event()

    def add(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, count: int) -> list[Any]:
        with anyio.fail_after(CALL_TIMEOUT):
            while len(self.items) < count:
                await self._changed.wait()
        return self.items


def _elicit_answer(answer: types.ElicitResult) -> ElicitationFnT:
    async def callback(
        context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestFormParams)
        assert "name" in params.requested_schema["properties"]
        return answer

    return callback


async def test_echo(target: Target, mode: str) -> None:
    async with Client(target, mode=mode) as client:
        assert client.protocol_version == ("2025-11-25" if mode == "legacy" else mode)
        with anyio.fail_after(CALL_TIMEOUT):
            tools = await client.list_tools()
            result = await client.call_tool("echo", {"text": "hello"})
        names = {tool.name for tool in tools.tools}
        assert {"echo", "count_slowly", "log_levels", "ask_name", "fail", "structured", "wait"} <= names
        assert "sample_haiku" in names
        assert not result.is_error
        assert _text(result) == "hello"
        assert result.structured_content is None


async def test_progress(target: Target, mode: str) -> None:
    seen = _Collector()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.add((progress, total, message))

    async with Client(target, mode=mode) as client:
        with anyio.fail_after(CALL_TIMEOUT):
            result = await client.call_tool("count_slowly", {"steps": 3}, progress_callback=on_progress)
        assert _text(result) == "counted 3"
        steps = await seen.wait_for(3)
        assert steps == [(1, 3, "step 1/3"), (2, 3, "step 2/3"), (3, 3, "step 3/3")]


async def test_logging(target: Target, mode: str) -> None:
    logs = _Collector()

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.add((params.level, params.data, params.logger))

    # Legacy: logging/setLevel on the connection. 2026-07-28: a per-request `_meta` opt-in.
    log_level: types.LoggingLevel | None = None if mode == "legacy" else "info"
    async with Client(target, mode=mode, logging_callback=on_log, log_level=log_level) as client:
        with anyio.fail_after(CALL_TIMEOUT):
            if mode == "legacy":
                assert client.server_capabilities.logging is not None
                with pytest.warns(MCPDeprecationWarning):
                    await client.set_logging_level("info")
            result = await client.call_tool("log_levels", {})
        assert _text(result) == "logged"
        received = await logs.wait_for(3)
        assert received == [
            ("info", "info message", "demo"),
            ("warning", "warning message", "demo"),
            ("error", "error message", "demo"),
        ]


async def test_logging_without_opt_in_2026(target: Target) -> None:
    logs = _Collector()

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.add(params)  # pragma: no cover - nothing is opted in

    async with Client(target, mode="2026-07-28", logging_callback=on_log) as client:
        with anyio.fail_after(CALL_TIMEOUT):
            result = await client.call_tool("log_levels", {})
        assert _text(result) == "logged"
        assert logs.items == []


async def test_elicitation_accepted(target: Target, mode: str) -> None:
    answer = types.ElicitResult(action="accept", content={"name": "Grace"})
    async with Client(target, mode=mode, elicitation_callback=_elicit_answer(answer)) as client:
        with anyio.fail_after(CALL_TIMEOUT):
            result = await client.call_tool("ask_name", {})
        assert not result.is_error
        assert _text(result) == "Hello, Grace!"


async def test_elicitation_declined(target: Target, mode: str) -> None:
    answer = types.ElicitResult(action="decline")
    async with Client(target, mode=mode, elicitation_callback=_elicit_answer(answer)) as client:
        with anyio.fail_after(CALL_TIMEOUT):
            result = await client.call_tool("ask_name", {})
        assert _text(result) == "no name given"


async def test_sampling(target: Target, mode: str) -> None:
    seen: list[types.CreateMessageRequestParams] = []

    async def sample(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        seen.append(params)
        text = types.TextContent(type="text", text="old pond / a frog jumps in / splash")
        return types.CreateMessageResult(role="assistant", content=text, model="test-model")

    async with Client(target, mode=mode, sampling_callback=sample) as client:
        with anyio.fail_after(CALL_TIMEOUT):
            result = await client.call_tool("sample_haiku", {"topic": "frogs"})
        assert _text(result) == "old pond / a frog jumps in / splash"
        assert len(seen) == 1
        content = seen[0].messages[0].content
        assert isinstance(content, types.TextContent)
        assert "frogs" in content.text


async def test_fail_is_error(target: Target, mode: str) -> None:
    async with Client(target, mode=mode) as client:
        with anyio.fail_after(CALL_TIMEOUT):
            result = await client.call_tool("fail", {"message": "kaput"})
        assert result.is_error
        assert "kaput" in _text(result)


async def test_structured(target: Target, mode: str) -> None:
    async with Client(target, mode=mode) as client:
        with anyio.fail_after(CALL_TIMEOUT):
            tools = await client.list_tools()
            result = await client.call_tool("structured", {"a": 6, "b": 7})
        (tool,) = [tool for tool in tools.tools if tool.name == "structured"]
        assert tool.output_schema is not None
        assert not result.is_error
        assert result.structured_content == {"sum": 13, "product": 42}


async def test_resources_prompts_completion(target: Target, mode: str) -> None:
    async with Client(target, mode=mode) as client:
        with anyio.fail_after(CALL_TIMEOUT):
            resources = await client.list_resources()
            templates = await client.list_resource_templates()
            readme = await client.read_resource("demo://readme")
            greeting = await client.read_resource("demo://greeting/Ada")
            prompt = await client.get_prompt("greet", {"name": "Ada"})
            completion = await client.complete(
                types.PromptReference(type="ref/prompt", name="greet"), {"name": "name", "value": "a"}
            )
        assert [str(r.uri) for r in resources.resources] == ["demo://readme"]
        assert [t.uri_template for t in templates.resource_templates] == ["demo://greeting/{name}"]
        (contents,) = readme.contents
        assert isinstance(contents, types.TextResourceContents) and "demo" in contents.text
        (contents,) = greeting.contents
        assert isinstance(contents, types.TextResourceContents) and contents.text == "Hello, Ada!"
        message = prompt.messages[0].content
        assert isinstance(message, types.TextContent) and "Ada" in message.text
        assert completion.completion.values == ["Ada", "Alan", "Alice"]


async def test_cancelled_call_leaves_connection_usable(target: Target, mode: str) -> None:
    async with Client(target, mode=mode) as client:
        with anyio.move_on_after(0.3) as scope:
            await client.call_tool("wait", {"seconds": 30})
        assert scope.cancelled_caught
        with anyio.fail_after(CALL_TIMEOUT):
            result = await client.call_tool("wait", {"seconds": 0.01})
        assert _text(result) == "waited"


@pytest.mark.parametrize("json_mode", MODES)
async def test_json_response_server(demo_json_url: str, json_mode: str) -> None:
    answer = types.ElicitResult(action="accept", content={"name": "Linus"})
    async with Client(demo_json_url, mode=json_mode, elicitation_callback=_elicit_answer(answer)) as client:
        with anyio.fail_after(CALL_TIMEOUT):
            echoed = await client.call_tool("echo", {"text": "json"})
            structured = await client.call_tool("structured", {"a": 1, "b": 2})
            if json_mode == "legacy":
                # A JSON-mode POST has no stream for the server-to-client elicitation/create request.
                with pytest.raises(MCPError, match="no back-channel"):
                    await client.call_tool("ask_name", {})
            else:
                # 2026-07-28 elicits through an InputRequiredResult round trip: plain request/response.
                greeted = await client.call_tool("ask_name", {})
                assert _text(greeted) == "Hello, Linus!"
        assert _text(echoed) == "json"
        assert structured.structured_content == {"sum": 3, "product": 2}
