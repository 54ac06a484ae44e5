"""The gateway as a 2026-07-28 server: what that revision asks of a server, seen from the host.

Methods the revision removed are not found, routing headers are read as HTTP reads field values,
list changes reach `subscriptions/listen` streams whatever kind of upstream made them, and a
resource that does not exist is named in the error, as the spec's resource-not-found error does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httptools
import httpx2
import mcp_types as types
import orjson
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import NAME_BEARING_METHODS, encode_header_value
from mcp_types import CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, PROTOCOL_VERSION_META_KEY

from store import RecordedInvocation, Seek
from tests.harness import RunningGateway, demo_stdio_yaml, keyless_config, serve_gateway
from tests.upstreams import changing_server, serve_handshake_only, serve_mcp, shelf_server

MODERN = "2026-07-28"
TIMEOUT = 20.0
RESOURCE_NOT_FOUND = -32602  # SEP-2164: a missing resource is invalid params, naming the URI
# The gateway groups 2026-07-28 requests by client name and version, and a group's upstream
# sessions keep the capabilities of its first request: these hosts must not share the SDK's name.
HOST = types.Implementation(name="modern-host", version="1")


def envelope(
    method: str, params: dict[str, Any] | None = None, *, client: str = "modern-host"
) -> dict[str, Any]:
    """A 2026-07-28 request: its client info and capabilities travel in `_meta`."""
    meta = {
        PROTOCOL_VERSION_META_KEY: MODERN,
        CLIENT_CAPABILITIES_META_KEY: {},
        CLIENT_INFO_META_KEY: {"name": client, "version": "1"},
    }
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**(params or {}), "_meta": meta}}


def routing_headers(message: dict[str, Any]) -> dict[str, str]:
    """The headers a 2026-07-28 host sends with `message`."""
    headers = {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": MODERN,
        "mcp-method": message["method"],
    }
    name_key = NAME_BEARING_METHODS.get(message["method"])
    if name_key is not None:
        headers["mcp-name"] = encode_header_value(message["params"][name_key])
    return headers


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as client:
        yield client


async def post(http: httpx2.AsyncClient, url: str, message: dict[str, Any]) -> httpx2.Response:
    with anyio.fail_after(TIMEOUT):
        return await http.post(url, json=message, headers=routing_headers(message))


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("ping", {}),
        ("logging/setLevel", {"level": "info"}),
        ("resources/subscribe", {"uri": "demo://readme"}),
        ("resources/unsubscribe", {"uri": "demo://readme"}),
    ],
)
async def test_a_method_the_2026_revision_removed_is_404_method_not_found(
    gateway: RunningGateway, http: httpx2.AsyncClient, method: str, params: dict[str, Any]
) -> None:
    response = await post(http, gateway.url, envelope(method, params))
    assert response.status_code == 404
    body = response.json()
    assert body["id"] == 1
    assert body["error"]["code"] == -32601


@dataclass
class _RawResponse:
    status: int = 0
    body: bytearray = field(default_factory=bytearray)
    done: bool = False

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


async def post_raw(base_url: str, header_lines: list[str], body: bytes) -> _RawResponse:
    """POST to /mcp with header lines written exactly as given: HTTP clients refuse to send a
    field value with surrounding whitespace, which RFC 9110 lets a sender put there."""
    host, port = base_url.removeprefix("http://").split(":")
    head = [
        "POST /mcp HTTP/1.1",
        f"Host: {host}:{port}",
        "Accept: application/json, text/event-stream",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *header_lines,
    ]
    answer = _RawResponse()
    parser = httptools.HttpResponseParser(answer)
    with anyio.fail_after(TIMEOUT):
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            while not answer.done:
                parser.feed_data(await stream.receive())
    answer.status = parser.get_status_code()
    return answer


@pytest.mark.parametrize("padding", [" ", "\t", "  \t "])
async def test_routing_headers_with_surrounding_whitespace_are_read_without_it(
    gateway: RunningGateway, padding: str
) -> None:
    """RFC 9110 5.5: a field value excludes the whitespace around it (a host that means edge
    whitespace in a name sends it base64-wrapped, never bare)."""
    message = envelope("tools/call", {"name": "demo__echo", "arguments": {"text": "padded"}})
    lines = [
        f"MCP-Protocol-Version: {padding}{MODERN}{padding}",
        f"Mcp-Method: {padding}tools/call{padding}",
        f"Mcp-Name: {padding}demo__echo{padding}",
    ]
    answer = await post_raw(gateway.base_url, lines, orjson.dumps(message))
    assert answer.status == 200, answer.body
    assert orjson.loads(answer.body)["result"]["content"] == [{"type": "text", "text": "padded"}]


# --- list changes reach subscriptions/listen streams -------------------------------------------


@pytest.fixture(scope="module")
async def changing_gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    """`modern__`: a 2026-07-28 upstream; `old__`: the same kind of server in the handshake era only;
    `slow__`: that again, slow to open its GET stream."""
    async with (
        serve_mcp(changing_server()) as modern,
        serve_handshake_only(changing_server()) as old,
        serve_handshake_only(changing_server(), slow_stream_s=1.0) as slow,
    ):
        upstreams = f"""
  - {{name: modern, transport: http, url: '{modern}'}}
  - {{name: old, transport: http, url: '{old}'}}
  - {{name: slow, transport: http, url: '{slow}'}}"""
        async with serve_gateway(keyless_config(tmp_path_factory.mktemp("changing"), upstreams)) as running:
            yield running


@pytest.mark.parametrize(
    ("upstream", "tool", "arguments"),
    [
        ("stdio", "demo__add_tool", {}),
        ("http-2026", "modern__add_tool", {}),
        ("http-handshake", "old__add_tool", {}),
        ("http-handshake-on-the-call-stream", "old__add_tool", {"related": True}),
        # Acknowledging the listen before the upstream's stream is open would lose the event.
        ("http-handshake-slow-to-open-its-stream", "slow__add_tool", {}),
    ],
)
async def test_a_tool_list_change_reaches_the_hosts_listen_stream(
    upstream: str,
    tool: str,
    arguments: dict[str, Any],
    gateway: RunningGateway,
    changing_gateway: RunningGateway,
) -> None:
    through = gateway if upstream == "stdio" else changing_gateway
    added = f"late_{uuid.uuid4().hex[:8]}"
    # A host of its own: a fresh group, whose upstream sessions the listen request opens.
    host = types.Implementation(name=f"listener-{uuid.uuid4().hex[:8]}", version="1")
    async with Client(through.url, mode=MODERN, client_info=host, cache=None) as client:
        with anyio.fail_after(TIMEOUT):
            async with client.listen(tools_list_changed=True) as subscription:
                await client.call_tool(tool, {"name": added, **arguments})
                async for event in subscription:
                    assert type(event).__name__ == "ToolsListChanged"
                    break
            # The host lists again, as the event asks, and finds the new tool.
            listed = {t.name for t in (await client.list_tools()).tools}
    assert tool.replace("add_tool", added) in listed


# --- a missing resource is named in the error --------------------------------------------------


@pytest.fixture(scope="module")
async def shelf_gateways(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[dict[str, RunningGateway]]:
    """A gateway in front of a 2026-07-28 `shelf` upstream, and one in front of a handshake-era one."""
    async with serve_mcp(shelf_server()) as modern, serve_handshake_only(shelf_server()) as old:
        modern_config = keyless_config(
            tmp_path_factory.mktemp("shelf"), f"\n  - {{name: shelf, transport: http, url: '{modern}'}}"
        )
        old_config = keyless_config(
            tmp_path_factory.mktemp("old-shelf"), f"\n  - {{name: shelf, transport: http, url: '{old}'}}"
        )
        async with serve_gateway(modern_config) as first, serve_gateway(old_config) as second:
            yield {"http-2026": first, "http-handshake": second}


@pytest.mark.parametrize("mode", ["legacy", MODERN])
async def test_reading_a_uri_no_upstream_serves_names_the_uri_in_the_error(
    gateway: RunningGateway, mode: str
) -> None:
    missing = "demo://nowhere/at-all"
    async with Client(gateway.url, mode=mode, client_info=HOST, cache=None) as client:
        with anyio.fail_after(TIMEOUT), pytest.raises(MCPError) as raised:
            await client.read_resource(missing)
    assert raised.value.error.code == RESOURCE_NOT_FOUND
    assert raised.value.error.data == {"uri": missing}


@pytest.mark.parametrize("mode", ["legacy", MODERN])
@pytest.mark.parametrize("upstream", ["http-2026", "http-handshake"])
async def test_an_upstreams_resource_not_found_reaches_the_host_with_its_uri(
    shelf_gateways: dict[str, RunningGateway], upstream: str, mode: str
) -> None:
    missing = "shelf://book/unknown"
    async with Client(shelf_gateways[upstream].url, mode=mode, client_info=HOST, cache=None) as client:
        with anyio.fail_after(TIMEOUT):
            found = await client.read_resource("shelf://book/known")
            with pytest.raises(MCPError) as raised:
                await client.read_resource(missing)
    assert isinstance(found.contents[0], types.TextResourceContents)
    assert raised.value.error.code == RESOURCE_NOT_FOUND
    assert raised.value.error.data == {"uri": missing}


async def test_a_failure_of_the_gateways_own_is_the_calls_error_not_an_http_500(
    tmp_path: Path, http: httpx2.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A defect in the gateway while it serves a 2026-07-28 call is that call's -32603, under its
    id, as it is for a session-based host: not a bare HTTP 500 with `id: null`. No real fault
    reaches this path (every upstream and store failure has an answer of its own), so the
    tools/call handler is replaced by one that raises: a mock, for want of a real defect."""

    async def broken(*args: object) -> dict[str, object]:
        raise RuntimeError("a defect of the gateway's own")

    async with serve_gateway(keyless_config(tmp_path, demo_stdio_yaml())) as running:
        monkeypatch.setitem(running.gateway.endpoint.proxy._handlers, "tools/call", broken)
        message = {**envelope("tools/call", {"name": "demo__echo", "arguments": {"text": "hi"}}), "id": 7}
        reply = await post(http, running.url, message)
    assert reply.status_code == 200, reply.text
    assert reply.json()["id"] == 7 and reply.json()["error"]["code"] == -32603, reply.text


# --- a host that closes its stream cancels its call ----------------------------------------------


async def test_a_host_that_cannot_be_asked_closing_its_stream_cancels_the_call_and_it_is_recorded(
    gateway: RunningGateway, http: httpx2.AsyncClient
) -> None:
    """Such a call runs in the request's own task (no InputRequired round can follow); closing
    the response stream is its cancellation, and the row still records it."""
    steps = 997  # about 10 s of progress, and a count no other test asks for
    message = envelope("tools/call", {"name": "demo__count_slowly", "arguments": {"steps": steps}})
    message["params"]["_meta"]["progressToken"] = "closing"
    headers = {**routing_headers(message), "mcp-param-steps": str(steps)}
    with anyio.fail_after(TIMEOUT):
        async with http.stream("POST", gateway.url, json=message, headers=headers) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data:"):  # the first progress event: the call is upstream
                    assert orjson.loads(line[5:])["method"] == "notifications/progress"
                    break
        closed = time.time()
        # The row is written once the call has ended: soon after the close, not when the upstream
        # would have finished (10 s of counting).
        while not (rows := await _rows_of(gateway, "demo__count_slowly", f'"steps":{steps}')):
            await anyio.lowlevel.checkpoint()  # each look is a store query: no timer needed
    assert [row.outcome for row in rows] == ["cancelled"]
    ended = rows[0].created_at.timestamp() + rows[0].duration_ms / 1000
    assert ended - closed < 3.0


async def _rows_of(gateway: RunningGateway, tool: str, arguments_hold: str) -> list[RecordedInvocation]:
    store = gateway.gateway.store
    sessions = await store.list_sessions(None, api_key_id=None, seek=Seek(), limit=500)
    return [
        row
        for session in sessions.rows
        for row in (await store.list_invocations(session.id, seek=Seek(), limit=500)).rows
        if row.tool_name == tool and arguments_hold in (row.arguments_json or "")
    ]
