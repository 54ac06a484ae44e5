"""The parity matrix: every passthrough behaviour, directly and through the gateway, same outcome.

Each scenario runs once against the demo upstream directly (Streamable HTTP) and once through
the gateway, where the demo is reached over stdio (`demo__`) and over HTTP (`web__`), in both
protocol generations. Apart from the tool-name prefix, the outcomes must be equal.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

from tests.harness import RunningGateway

MODES = ["legacy", "2026-07-28"]
CALL_TIMEOUT = 20.0


@dataclass
class Seen:
    """What the host's callbacks received during a scenario."""

    progress: list[tuple[float, float | None, str | None]] = field(default_factory=list)
    logs: list[tuple[str, Any]] = field(default_factory=list)
    elicitations: list[str] = field(default_factory=list)
    samplings: list[str] = field(default_factory=list)
    roots_asked: int = 0
    notifications: list[str] = field(default_factory=list)
    notified: anyio.Event = field(default_factory=anyio.Event)


def client_for(url: str, mode: str, seen: Seen, *, bare: bool = False) -> Client:
    """An SDK client with every callback recording into `seen`; a URL ending /sse uses that transport.

    `bare`: no elicitation or sampling callbacks, so the host declares it cannot be asked.
    """

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        seen.logs.append((params.level, params.data))

    async def on_elicit(
        context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        seen.elicitations.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Grace"})

    async def on_sample(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        content = params.messages[0].content
        seen.samplings.append(content.text if isinstance(content, types.TextContent) else "")
        text = types.TextContent(type="text", text="old pond / a frog jumps in / splash")
        return types.CreateMessageResult(role="assistant", content=text, model="test-model")

    async def on_roots(context: ClientRequestContext) -> types.ListRootsResult:
        seen.roots_asked += 1
        roots = [{"uri": "file:///work/project", "name": "project"}, {"uri": "file:///tmp"}]
        return types.ListRootsResult.model_validate({"roots": roots})

    async def on_message(message: object) -> None:
        if isinstance(message, types.ServerNotification):
            seen.notifications.append(message.method)
            seen.notified.set()

    return Client(
        sse_client(url) if url.endswith("/sse") else url,
        mode=mode,
        message_handler=on_message,
        logging_callback=on_log,
        elicitation_callback=None if bare else on_elicit,
        sampling_callback=None if bare else on_sample,
        list_roots_callback=None if bare else on_roots,
        log_level=None if mode == "legacy" else "info",
        cache=None,
        # The gateway groups 2026-07-28 requests by client name and version, and a group's upstream
        # sessions keep the capabilities of its first request: a different host, a different name.
        client_info=types.Implementation(name="bare-host", version="1") if bare else None,
    )


Scenario = Callable[[Client, str, Seen], Awaitable[Any]]


def _result(result: types.CallToolResult) -> dict[str, Any]:
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


async def echo(client: Client, prefix: str, seen: Seen) -> Any:
    return _result(await client.call_tool(prefix + "echo", {"text": "hello ünïcode \u2603"}))


async def structured(client: Client, prefix: str, seen: Seen) -> Any:
    return _result(await client.call_tool(prefix + "structured", {"a": 6, "b": 7}))


async def tool_error(client: Client, prefix: str, seen: Seen) -> Any:
    return _result(await client.call_tool(prefix + "fail", {"message": "kaput"}))


async def progress(client: Client, prefix: str, seen: Seen) -> Any:
    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.progress.append((progress, total, message))

    result = await client.call_tool(prefix + "count_slowly", {"steps": 3}, progress_callback=on_progress)
    return _result(result), seen.progress


async def logging(client: Client, prefix: str, seen: Seen) -> Any:
    if client.protocol_version != "2026-07-28":
        with pytest.warns(MCPDeprecationWarning):
            await client.set_logging_level("info")
    result = await client.call_tool(prefix + "log_levels", {})
    return _result(result), seen.logs


async def elicitation(client: Client, prefix: str, seen: Seen) -> Any:
    return _result(await client.call_tool(prefix + "ask_name", {})), seen.elicitations


async def sampling(client: Client, prefix: str, seen: Seen) -> Any:
    return _result(await client.call_tool(prefix + "sample_haiku", {"topic": "frogs"})), seen.samplings


async def roots(client: Client, prefix: str, seen: Seen) -> Any:
    return _result(await client.call_tool(prefix + "name_roots", {})), seen.roots_asked


async def asking_a_host_that_cannot_answer(client: Client, prefix: str, seen: Seen) -> Any:
    """The elicitation, sampling and roots tools, called by a host that declared none of them."""
    outcomes = []
    for tool, arguments in (("ask_name", {}), ("sample_haiku", {"topic": "frogs"}), ("name_roots", {})):
        try:
            outcomes.append(_result(await client.call_tool(prefix + tool, arguments)))
        except MCPError as exc:
            outcomes.append({"code": exc.error.code, "message": exc.error.message})
    return outcomes


async def cancellation(client: Client, prefix: str, seen: Seen) -> Any:
    with anyio.move_on_after(0.3) as scope:
        await client.call_tool(prefix + "wait", {"seconds": 30})
    after = await client.call_tool(prefix + "wait", {"seconds": 0.01})
    return scope.cancelled_caught, _result(after)


async def resources(client: Client, prefix: str, seen: Seen) -> Any:
    listed = await client.list_resources()
    readme = await client.read_resource("demo://readme")
    greeting = await client.read_resource("demo://greeting/Ada")
    return (
        [str(r.uri) for r in listed.resources],
        readme.model_dump(mode="json", exclude_none=True, exclude={"ttl_ms", "cache_scope"}),
        greeting.model_dump(mode="json", exclude_none=True, exclude={"ttl_ms", "cache_scope"}),
    )


async def prompts_and_completion(client: Client, prefix: str, seen: Seen) -> Any:
    prompt = await client.get_prompt(prefix + "greet", {"name": "Ada"})
    completion = await client.complete(
        types.PromptReference(type="ref/prompt", name=prefix + "greet"), {"name": "name", "value": "a"}
    )
    return prompt.model_dump(mode="json", exclude_none=True), completion.completion.values


async def listing(client: Client, prefix: str, seen: Seen) -> Any:
    tools = await client.list_tools()
    # Tools added at run time by other tests (tools_list_changed) are not part of the comparison.
    mine = [t for t in tools.tools if t.name.startswith(prefix) and not t.name.startswith(prefix + "late_")]
    return sorted(
        (t.name.removeprefix(prefix), t.model_dump(mode="json", exclude_none=True, exclude={"name"}))
        for t in mine
    )


async def subscription(client: Client, prefix: str, seen: Seen) -> Any:
    with pytest.warns(MCPDeprecationWarning):
        subscribed = await client.subscribe_resource("demo://readme")
    await client.call_tool(prefix + "touch", {"uri": "demo://readme"})
    await seen.notified.wait()
    with pytest.warns(MCPDeprecationWarning):
        unsubscribed = await client.unsubscribe_resource("demo://readme")
    return subscribed.model_dump(), unsubscribed.model_dump(), seen.notifications


async def tools_list_changed(client: Client, prefix: str, seen: Seen) -> Any:
    added = f"late_{uuid.uuid4().hex[:8]}"
    before = {t.name for t in (await client.list_tools()).tools}
    await client.call_tool(prefix + "add_tool", {"name": added})
    await seen.notified.wait()
    after = {t.name for t in (await client.list_tools()).tools}
    echoed = await client.call_tool(prefix + added, {"text": "late"})
    return (
        sorted(n.removeprefix(prefix) for n in after - before) == [added],
        seen.notifications,
        _result(echoed),
    )


async def listen_events(client: Client, prefix: str, seen: Seen) -> Any:
    added = f"late_{uuid.uuid4().hex[:8]}"
    events: list[str] = []
    async with client.listen(
        tools_list_changed=True, resource_subscriptions=["demo://readme"]
    ) as subscription:
        await client.call_tool(prefix + "touch", {"uri": "demo://readme"})
        await client.call_tool(prefix + "add_tool", {"name": added})
        async for event in subscription:
            events.append(f"{type(event).__name__} {getattr(event, 'uri', '')}".strip())
            if len(events) == 2:
                break
    return sorted(events)


SCENARIOS: list[Scenario] = [
    echo, structured, tool_error, progress, logging, elicitation, sampling, roots, cancellation,
    resources, prompts_and_completion, listing,
]  # fmt: skip
# resources/subscribe and the list_changed notifications on a session stream are handshake-era
# features; 2026-07-28 replaces them with subscriptions/listen (listen_events).
LEGACY_ONLY: list[Scenario] = [subscription, tools_list_changed]
MODERN_ONLY: list[Scenario] = [listen_events]


async def _run(url: str, mode: str, prefix: str, scenario: Scenario, *, bare: bool = False) -> Any:
    seen = Seen()
    async with client_for(url, mode, seen, bare=bare) as client:
        with anyio.fail_after(CALL_TIMEOUT):
            return await scenario(client, prefix, seen)


@pytest.mark.parametrize(
    ("scenario", "mode"),
    [(s, m) for s in SCENARIOS for m in MODES]
    + [(s, "legacy") for s in LEGACY_ONLY]
    + [(s, "2026-07-28") for s in MODERN_ONLY],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
@pytest.mark.parametrize("upstream", ["demo", "web", "old"])
async def test_gateway_matches_direct(
    scenario: Scenario,
    mode: str,
    upstream: str,
    demo_http_url: str,
    gateway: RunningGateway,
    web_gateway: RunningGateway,
    sse_gateway: RunningGateway,
) -> None:
    through = {"demo": gateway, "web": web_gateway, "old": sse_gateway}[upstream]
    direct = await _run(demo_http_url, mode, "", scenario)
    proxied = await _run(through.url, mode, f"{upstream}__", scenario)
    assert proxied == direct


BARE: list[Scenario] = [s for s in SCENARIOS if s not in (elicitation, sampling, roots)] + [
    asking_a_host_that_cannot_answer
]


@pytest.mark.parametrize("scenario", BARE, ids=lambda s: s.__name__)
@pytest.mark.parametrize("upstream", ["demo", "web"])
async def test_2026_hosts_that_cannot_be_asked_see_what_they_see_directly(
    scenario: Scenario,
    upstream: str,
    demo_http_url: str,
    gateway: RunningGateway,
    web_gateway: RunningGateway,
) -> None:
    """Hosts declaring no elicitation, sampling or roots take the gateway's inline path."""
    through = {"demo": gateway, "web": web_gateway}[upstream]
    direct = await _run(demo_http_url, "2026-07-28", "", scenario, bare=True)
    proxied = await _run(through.url, "2026-07-28", f"{upstream}__", scenario, bare=True)
    assert proxied == direct


@pytest.mark.parametrize("scenario", SCENARIOS + LEGACY_ONLY, ids=lambda s: s.__name__)
async def test_legacy_sse_hosts_see_what_they_see_directly(
    scenario: Scenario, demo_sse_url: str, gateway: RunningGateway
) -> None:
    direct = await _run(demo_sse_url, "legacy", "", scenario)
    proxied = await _run(f"{gateway.base_url}/sse", "legacy", "demo__", scenario)
    assert proxied == direct


async def test_ping_is_answered(gateway: RunningGateway) -> None:
    async with Client(gateway.url, mode="legacy") as client:
        with anyio.fail_after(CALL_TIMEOUT), pytest.warns(MCPDeprecationWarning):
            assert await client.send_ping() is not None


async def test_third_party_server_answers_through_the_gateway(gateway: RunningGateway) -> None:
    async with Client(gateway.url, mode="legacy") as client:
        with anyio.fail_after(CALL_TIMEOUT):
            tools = await client.list_tools()
            result = await client.call_tool("time__get_current_time", {"timezone": "Europe/London"})
    assert {"time__get_current_time", "time__convert_time"} <= {t.name for t in tools.tools}
    assert not result.is_error
    text = result.content[0]
    assert isinstance(text, types.TextContent) and '"timezone": "Europe/London"' in text.text


async def test_a_legacy_sse_hosts_traceparent_header_continues_its_trace_upstream(
    gateway: RunningGateway,
) -> None:
    trace = "0af7651916cd43dd8448eb211c80319c"
    headers = {"traceparent": f"00-{trace}-b7ad6b7169203331-01"}
    async with Client(sse_client(f"{gateway.base_url}/sse", headers=headers), mode="legacy") as client:
        with anyio.fail_after(20):
            result = await client.call_tool("demo__traceparent", {})
    seen = result.content[0].model_dump()["text"]
    assert seen.split("-")[1] == trace, seen  # the upstream got a child span of the host's trace
