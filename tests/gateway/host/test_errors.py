"""Every refusal a host can provoke on the MCP endpoint, one row each, as a host sees it today.

The transports build these answers at many call sites (Streamable HTTP, the 2026-07-28
stateless path, legacy HTTP+SSE). This table pins what comes out: status, content type, the
JSON-RPC error's code and id, and the headers a client acts on. Two refusals are not here,
as only a fault inside the gateway produces them: the 500 of a request that failed, and the
503 of a session that cannot be recorded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import httpx2
import orjson
import pytest

from store import generate_api_key
from tests.harness import INITIALIZE, RunningGateway, serve_gateway, write_config

TIMEOUT = 20.0
MAX_BODY = 2048
JSON = "application/json"
PING = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
MODERN = "2026-07-28"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "pinned", "version": "1"},
}


def modern(method: str, **params: Any) -> bytes:
    return orjson.dumps(
        {"jsonrpc": "2.0", "id": 3, "method": method, "params": {**params, "_meta": MODERN_META}}
    )


@dataclass(frozen=True)
class Ask:
    """One request. ``session`` presents an open session's id; ``via`` says which transport's
    channel carries the body: the MCP URL, or a legacy SSE connection's message URL."""

    method: str = "POST"
    path: str = "/mcp"
    key: Literal["good", "unknown", "none"] = "good"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = orjson.dumps(INITIALIZE)
    session: Literal["open", "streaming", "unknown", "none"] = "none"
    via: Literal["mcp", "legacy connection"] = "mcp"
    throttled: bool = False  # asked of a gateway that allows one failed key a minute, after one


@dataclass(frozen=True)
class Refusal:
    status: int
    content_type: str = JSON
    code: int | None = None  # the JSON-RPC error code; None when the body is not JSON-RPC
    id: int | None = None  # the JSON-RPC id the error carries
    headers: tuple[str, ...] = ()  # headers the answer must carry


INVALID_REQUEST, PARSE_ERROR, METHOD_NOT_FOUND, HEADER_MISMATCH = -32600, -32700, -32601, -32020
TOO_BIG = orjson.dumps({**PING, "params": {"padding": "x" * MAX_BODY}})

ROWS: dict[str, tuple[Ask, Refusal]] = {
    "host not allowed": (Ask(headers={"host": "evil.example"}), Refusal(421, code=INVALID_REQUEST)),
    "origin not allowed": (
        Ask(headers={"origin": "https://evil.example"}),
        Refusal(403, code=INVALID_REQUEST),
    ),
    "no key": (Ask(key="none"), Refusal(401, code=INVALID_REQUEST, headers=("www-authenticate",))),
    "unknown key": (Ask(key="unknown"), Refusal(401, code=INVALID_REQUEST, headers=("www-authenticate",))),
    "throttled": (
        Ask(key="unknown", throttled=True),
        Refusal(429, code=INVALID_REQUEST, headers=("retry-after",)),
    ),
    "another tenant's URL": (Ask(path="/mcp/{other}"), Refusal(404, code=INVALID_REQUEST)),
    "method not allowed": (Ask(method="PUT"), Refusal(405, code=INVALID_REQUEST, headers=("allow",))),
    "not declared JSON": (Ask(headers={"content-type": "text/plain"}), Refusal(415, code=INVALID_REQUEST)),
    "body too large": (Ask(body=TOO_BIG), Refusal(413, code=INVALID_REQUEST)),
    "not JSON": (Ask(body=b"{not json"), Refusal(400, code=PARSE_ERROR)),
    "not JSON-RPC": (
        Ask(body=b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}'),
        Refusal(400, code=INVALID_REQUEST),
    ),
    "a batch": (Ask(body=orjson.dumps([PING])), Refusal(400, code=INVALID_REQUEST)),
    "no session id": (Ask(body=orjson.dumps(PING)), Refusal(400, code=INVALID_REQUEST)),
    "unknown session": (Ask(body=orjson.dumps(PING), session="unknown"), Refusal(404, code=INVALID_REQUEST)),
    "unsupported protocol version": (
        Ask(body=orjson.dumps(PING), session="open", headers={"mcp-protocol-version": "2099-01-01"}),
        Refusal(400, code=INVALID_REQUEST),
    ),
    "GET without accepting SSE": (
        Ask(method="GET", body=None, session="open", headers={"accept": JSON}),
        Refusal(406, code=INVALID_REQUEST),
    ),
    "a second GET stream": (
        Ask(method="GET", body=None, session="streaming", headers={"accept": "text/event-stream"}),
        Refusal(409, code=INVALID_REQUEST),
    ),
    "DELETE of an unknown session": (
        Ask(method="DELETE", body=None, session="unknown"),
        Refusal(404, code=INVALID_REQUEST),
    ),
    "2026: a removed method": (
        Ask(body=modern("ping"), headers={"mcp-protocol-version": MODERN, "mcp-method": "ping"}),
        Refusal(404, code=METHOD_NOT_FOUND, id=3),
    ),
    "2026: a header that contradicts the body": (
        Ask(body=modern("tools/list"), headers={"mcp-protocol-version": MODERN, "mcp-method": "tools/call"}),
        Refusal(400, code=HEADER_MISMATCH, id=3),
    ),
    "2026: body too large": (
        Ask(body=modern("tools/list", padding="x" * MAX_BODY), headers={"mcp-protocol-version": MODERN}),
        Refusal(413, code=INVALID_REQUEST),
    ),
    "legacy: no key": (
        Ask(method="GET", path="/sse", key="none", body=None),
        Refusal(401, code=INVALID_REQUEST, headers=("www-authenticate",)),
    ),
    "legacy: throttled": (
        Ask(method="GET", path="/sse", key="unknown", body=None, throttled=True),
        Refusal(429, code=INVALID_REQUEST, headers=("retry-after",)),
    ),
    "legacy: method not allowed": (Ask(path="/sse"), Refusal(405, content_type="text/plain; charset=utf-8")),
    "legacy: unknown connection": (
        Ask(path="/messages?session_id=nope", body=orjson.dumps(PING)),
        Refusal(404, code=INVALID_REQUEST),
    ),
    "legacy: not declared JSON": (
        Ask(via="legacy connection", headers={"content-type": "text/plain"}),
        Refusal(415, code=INVALID_REQUEST),
    ),
    "legacy: body too large": (
        Ask(via="legacy connection", body=TOO_BIG),
        Refusal(413, code=INVALID_REQUEST),
    ),
    "legacy: not JSON": (Ask(via="legacy connection", body=b"{not json"), Refusal(400, code=PARSE_ERROR)),
    "legacy: not JSON-RPC": (
        Ask(via="legacy connection", body=b'"a string"'),
        Refusal(400, code=INVALID_REQUEST),
    ),
}


@dataclass
class Gateways:
    keyed: RunningGateway
    throttled: RunningGateway
    key: str
    other_organisation: str


@pytest.fixture(scope="module")
async def gateways(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateways]:
    keyed = (
        f"database: ./gw.db\nauth: {{required: true}}\nsecurity: {{max_body_bytes: {MAX_BODY}}}\n"
        "upstreams: []\n"
    )
    throttled = "database: ./gw.db\nauth: {required: true, max_failures_per_minute: 1}\nupstreams: []\n"
    async with (
        serve_gateway(write_config(tmp_path_factory.mktemp("keyed"), keyed)) as running,
        serve_gateway(write_config(tmp_path_factory.mktemp("throttled"), throttled)) as limited,
    ):
        store = running.gateway.store
        created = await store.create_api_key((await store.ensure_organisation("acme")).id)
        other = await store.ensure_organisation("globex")
        yield Gateways(running, limited, created.secret, other.id)


async def open_session(http: httpx2.AsyncClient, url: str, key: str) -> str:
    response = await http.post(
        url, json=INITIALIZE, headers={"x-api-key": key, "accept": "application/json, text/event-stream"}
    )
    assert response.status_code == 200, response.text
    return response.headers["mcp-session-id"]


@asynccontextmanager
async def sse_stream(
    http: httpx2.AsyncClient, url: str, headers: Mapping[str, str], until: str
) -> AsyncIterator[str]:
    """Hold a GET stream open from its first line starting with `until`; yield what follows."""
    async with http.stream("GET", url, headers=headers) as stream:
        assert stream.status_code == 200
        async for line in stream.aiter_lines():
            if line.startswith(until):
                yield line.removeprefix(until)
                return
        raise AssertionError("the stream ended before its first event")


async def ask(http: httpx2.AsyncClient, gateways: Gateways, request: Ask) -> httpx2.Response:
    running = gateways.throttled if request.throttled else gateways.keyed
    key = {"good": gateways.key, "unknown": generate_api_key(), "none": None}[request.key]
    headers = {"accept": "application/json, text/event-stream", "content-type": JSON}
    if key is not None:
        headers["x-api-key"] = key
    if request.session == "unknown":
        headers["mcp-session-id"] = "no-such-session"
    elif request.session in ("open", "streaming"):
        headers["mcp-session-id"] = await open_session(http, running.url, gateways.key)
    headers.update(request.headers)
    path = request.path.format(other=gateways.other_organisation)

    async def send(url: str) -> httpx2.Response:
        if request.throttled:  # a failure first, so that this one is past the limit
            await http.request(request.method, url, headers=headers, content=request.body)
        return await http.request(request.method, url, headers=headers, content=request.body)

    if request.session == "streaming":
        async with sse_stream(http, running.url, headers, ": stream open"):
            return await send(running.url)
    if request.via == "legacy connection":
        legacy = sse_stream(http, running.base_url + "/sse", {"x-api-key": gateways.key}, "data: ")
        async with legacy as endpoint:
            return await send(running.base_url + endpoint)
    return await send(running.base_url + path)


@pytest.mark.parametrize(("request_", "refusal"), ROWS.values(), ids=ROWS.keys())
async def test_each_refusal_a_host_can_provoke_has_its_pinned_status_and_error(
    gateways: Gateways, request_: Ask, refusal: Refusal
) -> None:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        with anyio.fail_after(TIMEOUT):
            response = await ask(http, gateways, request_)
    assert response.status_code == refusal.status, response.text
    assert response.headers["content-type"] == refusal.content_type
    for name in refusal.headers:
        assert response.headers.get(name), f"no {name} header"
    if refusal.code is None:
        return
    body = response.json()
    assert body["jsonrpc"] == "2.0" and body["id"] == refusal.id
    assert body["error"]["code"] == refusal.code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
