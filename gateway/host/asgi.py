"""Small ASGI helpers for the host-facing endpoints: headers, bounded bodies, guards, responses.

The MCP endpoint is a plain ASGI callable rather than a Starlette `Request` handler: it sits on
the hot path of every call, and building request objects it does not need costs CPU per call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Protocol
from urllib.parse import urlsplit

import anyio
from starlette.types import Receive, Scope, Send

from gateway.background import log_failure
from gateway.errors import BodyTooLarge, HostRefusal, MessageError
from gateway.protocol.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    JSONObject,
    check_message,
    dumps,
    error,
    loads,
)

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_MAX_SEEN_HOSTS = 256
JSON_HEADER = (b"content-type", b"application/json")
_OWS = " \t"


def headers_of(scope: Scope) -> dict[str, str]:
    """The request's headers, names lower-case (as ASGI gives them), values without the optional
    whitespace around them: RFC 9110 5.5 leaves it out of the field value, and llhttp (uvicorn's
    parser) keeps what trails."""
    return {name.decode("latin-1"): value.decode("latin-1").strip(_OWS) for name, value in scope["headers"]}


def is_json(headers: Mapping[str, str]) -> bool:
    """Whether the body is declared JSON (`application/json`, any case, parameters allowed)."""
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    return media_type == "application/json"


async def receive_message(receive: Receive, headers: Mapping[str, str], limit: int) -> JSONObject:
    """The one JSON-RPC message a host POSTed, read and checked the same way on every transport.
    `HostRefusal`: 415 (not declared JSON), 413 (over `limit` bytes), 400 (not JSON, a batch, or
    not a JSON-RPC message)."""
    if not is_json(headers):
        text = "Unsupported Media Type: send the JSON-RPC message as Content-Type: application/json"
        raise HostRefusal(415, INVALID_REQUEST, text)
    try:
        body = await read_body(receive, limit)
    except BodyTooLarge:
        raise HostRefusal(413, INVALID_REQUEST, f"Request body over {limit} bytes") from None
    try:
        parsed = loads(body)
        if isinstance(parsed, list):
            text = "Invalid Request: batches are not supported; send one message"
            raise MessageError(INVALID_REQUEST, text)
        return check_message(parsed)
    except MessageError as exc:
        raise HostRefusal(400, exc.code, exc.message) from None


async def answering_refusals(
    serve: Callable[[Scope, Receive, Send], Awaitable[None]], scope: Scope, receive: Receive, send: Send
) -> None:
    """Serve a host request; a refusal is answered by `send_refusal`, and a failure of the
    gateway's own is one log line and a JSON-RPC -32603 (a 500), never a traceback per request."""
    try:
        await serve(scope, receive, send)
    except HostRefusal as refusal:
        await send_refusal(send, refusal)
    except Exception as exc:
        log_failure(f"{scope['method']} {scope['path']}", exc)
        with contextlib.suppress(Exception):  # unless its response had already begun
            await send_refusal(send, HostRefusal(500, INTERNAL_ERROR, "Internal error"))


async def send_refusal(send: Send, refusal: HostRefusal) -> None:
    """The host surface's one error response: the refusal's status and its JSON-RPC error."""
    request_id = refusal.request_id if isinstance(refusal.request_id, str | int) else None
    body = error(request_id, refusal.code, refusal.message, refusal.data)
    await send_json(send, refusal.status, body, refusal.headers)


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


class OriginGuard:
    """DNS-rebinding protection: only the configured Host and Origin values get through.

    With nothing configured, only loopback names are allowed, which is right for a gateway
    bound to 127.0.0.1; a gateway exposed on a network must list its public names.
    """

    def __init__(self, allowed_hosts: Sequence[str], allowed_origins: Sequence[str]) -> None:
        self._hosts = frozenset(h.lower() for h in allowed_hosts)
        self._origins = frozenset(o.lower().rstrip("/") for o in allowed_origins)
        self._seen_hosts: dict[str, bool] = {}  # Host values parsed already, and the verdict

    def problem(self, headers: Mapping[str, str]) -> tuple[int, str] | None:
        host = headers.get("host", "").lower()
        if not self._host_allowed(host):
            return 421, f"Host {host!r} is not allowed (configure security.allowed_hosts)"
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin.lower().rstrip("/")):
            return 403, f"Origin {origin!r} is not allowed (configure security.allowed_origins)"
        return None

    def _host_allowed(self, host: str) -> bool:
        if host in self._hosts:
            return True
        allowed = self._seen_hosts.get(host)
        if allowed is None:
            name = urlsplit(f"//{host}").hostname or ""
            allowed = name in self._hosts if self._hosts else name in _LOOPBACK
            if len(self._seen_hosts) < _MAX_SEEN_HOSTS:  # a client chooses the value: bounded
                self._seen_hosts[host] = allowed
        return allowed

    def _origin_allowed(self, origin: str) -> bool:
        if origin in self._origins:
            return True
        if self._origins:
            return False
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and (parts.hostname or "") in _LOOPBACK


async def send_bytes(
    send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = (JSON_HEADER,)
) -> None:
    # A declared length spares the host parsing a chunked body: most servers answer this way.
    framing = (b"content-length", str(len(body)).encode())
    await send({"type": "http.response.start", "status": status, "headers": [*headers, framing]})
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send, status: int, body: object, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    await send_bytes(send, status, dumps(body), [JSON_HEADER, *headers])


def sse_event(message: JSONObject) -> bytes:
    return b"event: message\ndata: " + dumps(message) + b"\n\n"


class ResponseStream:
    """The answer to one host POST: JSON, unless the upstream sends related messages first.

    The SSE commitment is deferred until the first related message (progress, a log line, an
    elicitation request), so plain calls get a plain JSON response, as from most servers.
    """

    def __init__(self, send: Send, headers: Sequence[tuple[bytes, bytes]], sse_allowed: bool) -> None:
        self._send = send
        self._headers = list(headers)
        self._sse_allowed = sse_allowed
        self._streaming = False
        self._lock = asyncio.Lock()  # per response: asyncio's is the cheaper one

    async def send(self, message: JSONObject) -> None:
        if not self._sse_allowed:
            return  # the host accepts only JSON: it cannot receive anything but the response
        async with self._lock:
            if not self._streaming:
                self._streaming = True
                await self._send(
                    {"type": "http.response.start", "status": 200, "headers": self._sse_headers()}
                )
            await self._send({"type": "http.response.body", "body": sse_event(message), "more_body": True})

    async def finish(self, response: JSONObject, status: int = 200) -> None:
        async with self._lock:
            if self._streaming:
                await self._send({"type": "http.response.body", "body": sse_event(response)})
            else:
                await send_bytes(self._send, status, dumps(response), [JSON_HEADER, *self._headers])

    def _sse_headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache, no-transform"),
            (b"x-accel-buffering", b"no"),
            *self._headers,
        ]


class EventStream:
    """A long-lived SSE response (the host's GET stream) that others write messages into."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._lock = asyncio.Lock()  # per response: asyncio's is the cheaper one

    async def start(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        await self._send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                    *headers,
                ],
            }
        )
        await self._send({"type": "http.response.body", "body": b": stream open\n\n", "more_body": True})

    async def send(self, message: JSONObject) -> None:
        async with self._lock:
            await self._send({"type": "http.response.body", "body": sse_event(message), "more_body": True})

    async def close(self) -> None:
        async with self._lock:
            await self._send({"type": "http.response.body", "body": b""})


async def wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Awaited(Protocol):
    """Something that happens once: an `anyio.Event`, a session's end, the server stopping."""

    async def wait(self) -> None: ...


async def wait_for_disconnect_or(receive: Receive, *ends: Awaited) -> bool:
    """Wait until the host disconnects (True) or any of `ends` happens first (False: the host is
    still there, and its response should end as responses do)."""
    async with anyio.create_task_group() as tg:

        async def end_when(end: Awaited) -> None:
            await end.wait()
            tg.cancel_scope.cancel()

        for end in ends:
            tg.start_soon(end_when, end)
        await wait_for_disconnect(receive)
        tg.cancel_scope.cancel()
        return True
    return False
