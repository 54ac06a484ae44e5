"""Slow and abusive HTTP clients: the gateway bounds how long and how much a request may take to
arrive, answers 408/414/431 where it can, and keeps serving everyone else.

Every test talks to a real gateway under uvicorn over raw sockets (asyncio streams), so what is
sent and when is exactly what an abusive client would do. The gateway here waits 1 s for a head
and 1 s for a body; the defaults are 10 s and 30 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httptools
import httpx2
import mcp_types as types
import orjson
import pytest
from mcp import Client

from tests.harness import INITIALIZE, RunningGateway, demo_stdio_yaml, keyless_config, serve_gateway

HEAD_S = 1.0
BODY_S = 1.0
MAX_URL = 2048
LIMITS = f"security: {{header_timeout_s: {HEAD_S}, body_timeout_s: {BODY_S}, max_url_bytes: {MAX_URL}}}\n"
# How long past its deadline a refused connection may take to close on a busy 2-core machine.
SLACK_S = 10.0
TIMEOUT = 30.0
ACCEPT = "application/json, text/event-stream"


def limited_config(directory: Path) -> Path:
    return keyless_config(directory, demo_stdio_yaml(), LIMITS)


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    async with serve_gateway(limited_config(tmp_path_factory.mktemp("slow"))) as running:
        yield running


async def connect(gateway: RunningGateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(gateway.base_url.rsplit(":", 1)[1])
    with anyio.fail_after(TIMEOUT):
        return await asyncio.open_connection("127.0.0.1", port)


async def until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the gateway sends before it closes the connection."""
    with anyio.fail_after(within):
        return await reader.read()


async def send_quietly(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Send `data`, ignoring the gateway closing the connection part-way (it is meant to)."""
    try:
        writer.write(data)
        await writer.drain()
    except ConnectionError:
        pass


def head(target: str = "/healthz", *lines: str, method: str = "GET") -> bytes:
    return "\r\n".join([f"{method} {target} HTTP/1.1", "host: 127.0.0.1", *lines, "", ""]).encode()


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()

    def json(self) -> dict[str, object]:
        text = bytes(self.body)
        if self.headers.get("content-type", "").startswith("text/event-stream"):
            text = next(line[5:] for line in text.splitlines() if line.startswith(b"data:"))
        parsed: dict[str, object] = orjson.loads(text)
        return parsed


class Responses:
    """The responses read off one kept-alive connection, with llhttp (httptools) as a client would."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.complete: list[Response] = []
        self._current = Response()

    def on_message_begin(self) -> None:
        self._current = Response()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._current.headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self._current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._current.body += body

    def on_message_complete(self) -> None:
        self.complete.append(self._current)


async def read_responses(reader: asyncio.StreamReader, count: int) -> list[Response]:
    responses = Responses()
    with anyio.fail_after(TIMEOUT):
        while len(responses.complete) < count:
            data = await reader.read(65536)
            assert data, "the gateway closed a connection it should have kept"
            responses.parser.feed_data(data)
    return responses.complete


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, Response]:
    writer.write(request)
    [response] = await read_responses(reader, 1)
    return response.status, response


def post(body: object, *lines: str) -> bytes:
    payload = orjson.dumps(body)
    lines = ("content-type: application/json", f"accept: {ACCEPT}", f"content-length: {len(payload)}", *lines)
    return head("/mcp", *lines, method="POST") + payload


def call(request_id: int, tool: str, arguments: dict[str, object]) -> dict[str, object]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }


async def test_a_connection_that_sends_nothing_gets_408_and_is_closed_after_the_head_timeout(
    gateway: RunningGateway,
) -> None:
    reader, writer = await connect(gateway)
    started = time.monotonic()
    answer = await until_closed(reader, HEAD_S + SLACK_S)
    waited = time.monotonic() - started
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in answer.lower()
    assert waited >= HEAD_S * 0.9  # not before the client had its time


async def test_a_head_trickled_byte_by_byte_gets_408_within_the_head_timeout(gateway: RunningGateway) -> None:
    reader, writer = await connect(gateway)
    request = head("/healthz", *(f"x-filler-{i}: {'v' * 20}" for i in range(100)))
    sent = 0
    closed = anyio.Event()

    async def trickle() -> None:
        nonlocal sent
        for byte in request:
            if closed.is_set():
                return
            await send_quietly(writer, bytes([byte]))
            sent += 1
            # The abusive client's own pace (a byte every 20 ms), not synchronisation.
            await anyio.sleep(0.02)

    async with anyio.create_task_group() as tg:
        tg.start_soon(trickle)
        answer = await until_closed(reader, HEAD_S + SLACK_S)
        closed.set()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert 10 < sent < len(request)  # it was still sending when the gateway gave up on it


async def test_a_body_trickled_after_a_large_content_length_gets_408(gateway: RunningGateway) -> None:
    reader, writer = await connect(gateway)
    lines = ("content-type: application/json", f"accept: {ACCEPT}", "content-length: 1000000")
    await send_quietly(writer, head("/mcp", *lines, method="POST") + b'{"jsonrpc": "2.0", ')
    closed = anyio.Event()

    async def trickle() -> None:
        while not closed.is_set():
            await send_quietly(writer, b" ")
            await anyio.sleep(0.02)  # the client's pace, not synchronisation

    async with anyio.create_task_group() as tg:
        tg.start_soon(trickle)
        answer = await until_closed(reader, BODY_S + SLACK_S)
        closed.set()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")


@pytest.mark.parametrize(("count", "status"), [(100, 200), (101, 431)])
async def test_more_than_100_headers_are_refused_with_431(
    gateway: RunningGateway, count: int, status: int
) -> None:
    reader, writer = await connect(gateway)
    # With host and connection, `count` headers in all.
    fillers = [f"x-filler-{i}: {i}" for i in range(count - 2)]
    await send_quietly(writer, head("/healthz", "connection: close", *fillers))
    answer = await until_closed(reader, TIMEOUT)
    writer.close()
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())


@pytest.mark.parametrize(("size", "status"), [(60 * 1024, 200), (1024 * 1024, 431)])
async def test_headers_over_64_kib_in_all_are_refused_with_431(
    gateway: RunningGateway, size: int, status: int
) -> None:
    reader, writer = await connect(gateway)
    async with anyio.create_task_group() as tg:
        tg.start_soon(send_quietly, writer, head("/healthz", "connection: close", "x-big: " + "b" * size))
        answer = await until_closed(reader, TIMEOUT)
    writer.close()
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())


@pytest.mark.parametrize(("length", "status"), [(MAX_URL, 200), (MAX_URL + 1, 414), (1024 * 1024, 414)])
async def test_a_request_target_over_max_url_bytes_is_refused_with_414(
    gateway: RunningGateway, length: int, status: int
) -> None:
    reader, writer = await connect(gateway)
    target = "/healthz?pad=" + "p" * (length - len("/healthz?pad="))
    async with anyio.create_task_group() as tg:
        tg.start_soon(send_quietly, writer, head(target, "connection: close"))
        answer = await until_closed(reader, TIMEOUT)
    writer.close()
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())


async def test_a_keep_alive_client_makes_several_calls_on_one_connection_even_one_slower_than_the_timeouts(
    gateway: RunningGateway,
) -> None:
    reader, writer = await connect(gateway)
    status, response = await exchange(reader, writer, post(INITIALIZE))
    assert status == 200
    session = f"mcp-session-id: {response.headers['mcp-session-id']}"
    status, _ = await exchange(
        reader, writer, post({"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
    )
    assert status == 202
    slow = HEAD_S + BODY_S + 0.5
    calls = [
        call(2, "demo__echo", {"text": "one"}),
        call(3, "demo__wait", {"seconds": slow}),  # the response outlasts both timeouts
        call(4, "demo__echo", {"text": "after"}),
    ]
    texts = []
    for message in calls:
        status, response = await exchange(reader, writer, post(message, session))
        assert status == 200
        result = types.CallToolResult.model_validate(response.json()["result"])
        block = result.content[0]
        assert isinstance(block, types.TextContent)
        texts.append(block.text)
    writer.close()
    assert texts == ["one", "waited", "after"]


async def test_a_pipelined_request_with_a_large_body_waiting_behind_a_slow_call_is_answered(
    gateway: RunningGateway,
) -> None:
    reader, writer = await connect(gateway)
    _, response = await exchange(reader, writer, post(INITIALIZE))
    session = f"mcp-session-id: {response.headers['mcp-session-id']}"
    slow = post(call(2, "demo__wait", {"seconds": HEAD_S + BODY_S + 0.5}), session)
    # uvicorn stops reading the second request's body while the first is answered, for longer
    # than the body timeout; that time is the server's, not the client's.
    big = post(call(3, "demo__echo", {"text": "q" * 1024 * 1024}), session)
    async with anyio.create_task_group() as tg:
        tg.start_soon(send_quietly, writer, slow + big)
        first, second = await read_responses(reader, 2)
    writer.close()
    assert (first.status, second.status) == (200, 200)
    assert "waited" in str(first.json())
    assert str(second.json()).count("q") >= 1024 * 1024


async def test_a_body_still_trickling_after_an_early_answer_is_cut_off(gateway: RunningGateway) -> None:
    reader, writer = await connect(gateway)
    lines = (
        "content-type: application/json",
        f"accept: {ACCEPT}",
        "content-length: 1000000",
        "x-api-key: mgw_no",
    )
    await send_quietly(writer, head("/mcp", *lines, method="POST") + b"{")
    closed = anyio.Event()

    async def trickle() -> None:
        while not closed.is_set():
            await send_quietly(writer, b" ")
            await anyio.sleep(0.02)  # the client's pace, not synchronisation

    async with anyio.create_task_group() as tg:
        tg.start_soon(trickle)
        answer = await until_closed(reader, BODY_S + SLACK_S)
        closed.set()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401 ")  # answered at once, and closed once the body timed out


async def test_a_kept_alive_connection_sending_only_stray_line_breaks_is_closed(
    gateway: RunningGateway,
) -> None:
    reader, writer = await connect(gateway)
    status, _ = await exchange(reader, writer, head("/healthz"))
    assert status == 200
    closed = anyio.Event()

    async def trickle() -> None:
        # Each CRLF resets uvicorn's keep-alive timer, and none starts a request.
        while not closed.is_set():
            await send_quietly(writer, b"\r\n")
            await anyio.sleep(0.05)  # the client's pace, not synchronisation

    async with anyio.create_task_group() as tg:
        tg.start_soon(trickle)
        # uvicorn's keep-alive (5 s) plus the head timeout.
        answer = await until_closed(reader, 5 + HEAD_S + SLACK_S)
        closed.set()
    writer.close()
    assert answer == b""


async def test_a_sessions_get_stream_stays_open_longer_than_the_body_timeout(gateway: RunningGateway) -> None:
    headers = {"accept": ACCEPT}
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        opened = await http.post(gateway.url, json=INITIALIZE, headers=headers)
        headers["mcp-session-id"] = opened.headers["mcp-session-id"]
        notified = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await http.post(gateway.url, json=notified, headers=headers)).status_code == 202
        async with http.stream(
            "GET", gateway.url, headers={**headers, "accept": "text/event-stream"}
        ) as stream:
            assert stream.status_code == 200
            # A stalled body elsewhere gets its 408 once the body timeout has run on the gateway's
            # own clock: by then this stream has been open longer than that.
            reader, writer = await connect(gateway)
            lines = ("content-type: application/json", "content-length: 100")
            await send_quietly(writer, head("/mcp", *lines, method="POST"))
            assert (await until_closed(reader, BODY_S + SLACK_S)).startswith(b"HTTP/1.1 408 ")
            writer.close()
            added = await http.post(
                gateway.url, json=call(2, "demo__add_tool", {"name": "late"}), headers=headers
            )
            assert added.status_code == 200
            seen = b""
            with anyio.fail_after(TIMEOUT):
                async for chunk in stream.aiter_bytes():
                    seen += chunk
                    if b"notifications/tools/list_changed" in seen:
                        break
    assert b"notifications/tools/list_changed" in seen


async def test_200_stalled_connections_are_all_closed_and_the_gateway_still_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.host.limits")
    secret = "mgw_do_not_log_me"
    stalls = [
        b"",  # connects and sends nothing
        head("/mcp", f"x-api-key: {secret}", method="POST")[:-2] + b"x-half: ",  # a head cut short
        head(
            "/mcp",
            f"x-note: {secret}",
            "content-type: application/json",
            "content-length: 4096",
            method="POST",
        )
        + b"{",  # a body cut short
    ]
    async with serve_gateway(limited_config(tmp_path)) as running:
        connections = []
        for i in range(200):
            reader, writer = await connect(running)
            await send_quietly(writer, stalls[i % len(stalls)])
            connections.append((reader, writer))
        with anyio.fail_after(HEAD_S + BODY_S + SLACK_S):
            answers = [await until_closed(reader, TIMEOUT) for reader, _ in connections]
        for _, writer in connections:
            writer.close()
        async with Client(running.url, mode="legacy") as client:
            with anyio.fail_after(TIMEOUT):
                result = await client.call_tool("demo__echo", {"text": "still here"})
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers)
    block = result.content[0]
    assert isinstance(block, types.TextContent) and block.text == "still here"
    lines = [r for r in caplog.records if r.name == "gateway.host.limits"]
    assert 1 <= len(lines) <= 3, [r.getMessage() for r in lines]  # rate-capped, not one per connection
    assert all(r.levelno == logging.INFO for r in lines)
    assert secret not in caplog.text
