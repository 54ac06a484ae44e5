"""Requests that once stopped, stalled or fooled the gateway (issue 11), each a property or a case.

Every one of these was a defect with a reproduction; they stay here, drawn afresh on every long
run, so that none comes back. The general fuzzers keep to what any server must survive; these
go straight at the known weak spots: JSON nested past the encoder, bad protocol headers,
duplicate ids, stalled bodies, huge heads, and methods the 2026-07-28 revision removed.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx2
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz.budget import REQUEST_DEADLINE_S, fuzz_settings
from tests.fuzz.strategies import (
    CAPABILITIES_META,
    CLIENT_INFO_META,
    PROTOCOL_META,
    content_types,
    header_values,
)
from tests.fuzz.world import ACCEPT, MODERN_VERSION, World, as_bytes

# A property that fails today fails on its first examples: no shrinking, few examples.
_DEFECT = settings(fuzz_settings(examples=12), phases=[Phase.explicit, Phase.generate])
TRICKLE_DEADLINE_S = 10.0
"""How long a stalled body may hold a connection; the fix decides the real limit, keep this above it."""


def _modern_meta() -> dict[str, Any]:
    return {
        PROTOCOL_META: MODERN_VERSION,
        CAPABILITIES_META: {},
        CLIENT_INFO_META: {"name": "defects", "version": "1"},
    }


def _modern_headers(world: World, method: str, name: str | None = None) -> dict[str, str]:
    headers = {"accept": ACCEPT, "mcp-protocol-version": MODERN_VERSION, "mcp-method": method}
    if name is not None:
        headers["mcp-name"] = name
    return {**headers, **world.fuzz.headers}


def _nested_text(depth: int, as_list: bool) -> str:
    """JSON nested `depth` levels deep, as text (json.dumps would recurse past Python's limit)."""
    opening, closing = ("[", "]") if as_list else ('{"d":', "}")
    return opening * depth + '"bottom"' + closing * depth


@_DEFECT
@given(depth=st.integers(255, 1024), as_list=st.booleans(), modern=st.booleans())
async def test_deeply_nested_json_is_refused_with_a_json_rpc_error(
    fuzz_world: World, depth: int, as_list: bool, modern: bool
) -> None:
    arguments = '{"text":' + _nested_text(depth, as_list) + "}"
    if modern:
        meta = json.dumps(_modern_meta())
        params = f'{{"name":"web__echo","_meta":{meta},"arguments":{arguments}}}'
        headers = _modern_headers(fuzz_world, "tools/call", "web__echo")
    else:
        params = f'{{"name":"web__echo","arguments":{arguments}}}'
        session = await fuzz_world.live_session()
        headers = {"accept": ACCEPT, "mcp-session-id": session, **fuzz_world.fuzz.headers}
    body = f'{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{params}}}'
    with anyio.fail_after(REQUEST_DEADLINE_S):
        response = await fuzz_world.http.post(
            fuzz_world.gateway.url, content=body, headers={**headers, "content-type": "application/json"}
        )
    # A session's invalid params are a JSON-RPC error in a 200, as for any other request; the
    # 2026 revision gives the error its HTTP status (400).
    assert response.status_code == (400 if modern else 200), response.text[:300]
    assert response.json()["error"]["code"] == -32602


@_DEFECT
@given(version=header_values.filter(lambda v: v not in (b"2025-11-25", b"2025-06-18", b"2025-03-26")))
async def test_a_session_request_naming_no_known_protocol_version_is_a_400(
    fuzz_world: World, version: bytes
) -> None:
    session = await fuzz_world.live_session()
    headers = [
        (b"accept", ACCEPT.encode()),
        (b"mcp-session-id", session.encode()),
        (b"mcp-protocol-version", version),
        *as_bytes(fuzz_world.fuzz.headers),
    ]
    with anyio.fail_after(REQUEST_DEADLINE_S):
        response = await fuzz_world.http.post(
            fuzz_world.gateway.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers
        )
    assert response.status_code == 400, response.text[:300]


@_DEFECT
@given(
    content_type=(content_types | header_values).filter(
        lambda v: not v.lower().startswith(b"application/json")
    )
)
async def test_a_post_whose_content_type_is_not_json_is_a_415(fuzz_world: World, content_type: bytes) -> None:
    session = await fuzz_world.live_session()
    headers = [
        (b"accept", ACCEPT.encode()),
        (b"mcp-session-id", session.encode()),
        (b"content-type", content_type),
        *as_bytes(fuzz_world.fuzz.headers),
    ]
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()
    with anyio.fail_after(REQUEST_DEADLINE_S):
        response = await fuzz_world.http.post(fuzz_world.gateway.url, content=body, headers=headers)
    assert response.status_code == 415, response.text[:300]


async def test_two_requests_in_flight_with_one_id_are_both_answered_at_once(fuzz_world: World) -> None:
    """Both are answered well inside the upstream's call timeout (3 s): one result, and the other
    the same or a refusal; neither waits out the timeout because its answer went to the other."""
    session = await fuzz_world.live_session()
    headers = {"accept": ACCEPT, "mcp-session-id": session, **fuzz_world.fuzz.headers}
    call = {
        "jsonrpc": "2.0",
        "id": 42,
        "method": "tools/call",
        "params": {"name": "slow__wait", "arguments": {"seconds": 0.5}},
    }
    answers: list[httpx2.Response] = []

    async def send() -> None:
        answers.append(await fuzz_world.http.post(fuzz_world.gateway.url, json=call, headers=headers))

    with anyio.fail_after(2.5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            tg.start_soon(send)
    assert all(answer.status_code < 500 for answer in answers), [a.text[:300] for a in answers]
    results = [a.json() for a in answers if a.status_code == 200]
    assert any(r.get("result", {}).get("content") == [{"type": "text", "text": "waited"}] for r in results)
    assert not any("timed out" in json.dumps(r.get("error", "")).lower() for r in results)


async def test_a_stalled_request_body_is_cut_off(fuzz_world: World) -> None:
    host, port = fuzz_world.gateway.base_url.removeprefix("http://").split(":")
    head = (
        f"POST /mcp HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {fuzz_world.fuzz.key}\r\ncontent-length: 1000\r\n\r\n"
    )
    with anyio.move_on_after(TRICKLE_DEADLINE_S) as waited:
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(head.encode() + b'{"jsonrpc":')

            async def trickle() -> None:
                while True:
                    await anyio.sleep(0.5)  # the slow client under test, not synchronisation
                    await stream.send(b" ")

            async with anyio.create_task_group() as tg:
                tg.start_soon(trickle)
                try:
                    answer = await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    answer = b"closed"
                tg.cancel_scope.cancel()
    assert not waited.cancelled_caught, f"still waiting for the body after {TRICKLE_DEADLINE_S} s"
    assert answer == b"closed" or answer.startswith((b"HTTP/1.1 408", b"HTTP/1.1 400")), answer[:200]


@pytest.mark.parametrize(("count", "size"), [(1, 1_000_000), (200, 8_000)], ids=["one-1MB", "200x8KB"])
async def test_huge_request_headers_are_refused(fuzz_world: World, count: int, size: int) -> None:
    headers = {f"x-padding-{i}": "a" * size for i in range(count)}
    session = await fuzz_world.live_session()
    with anyio.fail_after(REQUEST_DEADLINE_S):
        try:
            response = await fuzz_world.http.post(
                fuzz_world.gateway.url,
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={"accept": ACCEPT, "mcp-session-id": session, **fuzz_world.fuzz.headers, **headers},
            )
        except httpx2.RemoteProtocolError:
            return  # the server closed the connection on the headers: refused, if without a word
    assert response.status_code in (400, 431), response.text[:300]


_REMOVED_AT_2026: list[Any] = [
    pytest.param("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}}, id="initialize"),
    pytest.param("ping", {}, id="ping"),
    pytest.param(
        "logging/setLevel",
        {"level": "debug"},
        id="logging/setLevel",
    ),
    pytest.param(
        "resources/subscribe",
        {"uri": "demo://nothing"},  # removed whatever it names: not routed, not a 400 for the URI
        id="resources/subscribe",
    ),
    pytest.param(
        "resources/unsubscribe",
        {"uri": "demo://nothing"},
        id="resources/unsubscribe",
    ),
]


@pytest.mark.parametrize(("method", "params"), _REMOVED_AT_2026)
async def test_methods_removed_in_2026_are_method_not_found_with_404(
    fuzz_world: World, method: str, params: dict[str, Any]
) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": _modern_meta()}}
    name = params.get("uri") if method.startswith("resources/") else None
    with anyio.fail_after(REQUEST_DEADLINE_S):
        response = await fuzz_world.http.post(
            fuzz_world.gateway.url, json=body, headers=_modern_headers(fuzz_world, method, name)
        )
    assert response.status_code == 404, response.text[:300]
    assert response.json()["error"]["code"] == -32601
