"""An upstream MCP server over Streamable HTTP, in either protocol generation.

Handshake era (<= 2025-11-25): the channel is one upstream session; it learns `Mcp-Session-Id`
from the `initialize` response, sends it on every request, keeps a GET stream open for
server-initiated messages and DELETEs the session on close.
2026-07-28: the channel is stateless; every POST carries the routing headers the revision
requires (`Mcp-Method`, `Mcp-Name`), and cancelling a call is closing its response stream.
All channels of one upstream share one `wire.Pool`, so connections are pooled and reused
across host sessions, never opened per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

import anyio
import httpx2
from anyio.abc import TaskGroup
from mcp.client.auth.utils import extract_field_from_www_auth
from mcp.shared.inbound import MCP_METHOD_HEADER, MCP_NAME_HEADER, NAME_BEARING_METHODS, encode_header_value
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from gateway.background import start_guarded
from gateway.errors import (
    ConnectFailed,
    ConnectTimeout,
    CredentialError,
    EventStreamError,
    MessageError,
    ResponseTooLarge,
    TooDeep,
    UpstreamSessionExpired,
    UpstreamUnauthorized,
    UpstreamUnavailable,
    UpstreamUnreachable,
    WireError,
)
from gateway.protocol.jsonrpc import MAX_DEPTH, JSONObject, dumps, loads_relayable
from gateway.upstream._wire import Pool, Response
from gateway.upstream.channel import MessageSink, Unsolicited
from gateway.upstream.demux import StrayResponses
from gateway.upstream.events import Event, EventDecoder
from gateway.upstream.listening import ListenStreams
from gateway.upstream.param_headers import ToolHeaders

logger = logging.getLogger(__name__)

HeaderSource = Callable[[], Awaitable[Mapping[str, str]]]
_ACCEPT = "application/json, text/event-stream"
_LISTEN_RETRY_S = 1.0
_RESUME_DEFAULT_S = 1.0  # a response stream's reconnection time when the server set none (as the SDK's)
_RESUME_ATTEMPTS = 3  # resumptions in a row that bring no new event before the call is given up
_ONE_WAY_S = 30.0  # a notification or response is acknowledged at once (202) by any sane server


class HttpChannel:
    def __init__(
        self,
        name: str,
        pool: Pool,
        unsolicited: Unsolicited,
        *,
        extra_headers: HeaderSource | None = None,
        modern_version: str | None = None,
        listen_streams: ListenStreams | None = None,
        tool_headers: ToolHeaders | None = None,
    ) -> None:
        self._name = name
        self._tool_headers = tool_headers or ToolHeaders(name)  # the connector's, shared by its channels
        self._pool = pool
        self._listen_streams = listen_streams  # None: GET streams share the calls' pool
        self._unsolicited = unsolicited
        self._extra_headers = extra_headers
        self._modern_version = modern_version
        self._session_id: str | None = None
        self._protocol_version: str | None = modern_version
        self._closed = False
        self._strays = StrayResponses(name)
        self._listen_scope: anyio.CancelScope | None = None
        # Set once the GET stream is open, or known not to be coming: until then, what the
        # upstream announces (list changes, resource updates) has nowhere to go and is lost.
        self.listening = anyio.Event()
        # Set once a GET stream has opened (for a session past max_listen_streams: once it got a slot).
        self.stream_open = anyio.Event()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def session_id(self) -> str | None:
        return self._session_id

    @property
    def protocol_version(self) -> str | None:
        return self._protocol_version

    def set_protocol_version(self, version: str) -> None:
        self._protocol_version = version

    async def request(
        self,
        message: JSONObject,
        sink: MessageSink | None,
        headers: Mapping[str, str] | None = None,
        *,
        pool: Pool | None = None,
    ) -> JSONObject:
        request_headers = await self._headers(message, headers)
        body = dumps(message)  # TooDeep reaches the caller: the message's fault, not the upstream's
        try:
            resp = await (pool or self._pool).request("POST", request_headers, body)
            try:
                if message.get("method") == "initialize":
                    self._session_id = resp.headers.get("mcp-session-id")
                if resp.status >= 400:
                    return await self._error_response(resp, message)
                if resp.headers.get("content-type", "").startswith("text/event-stream"):
                    response = await self._relay_stream(resp, message, sink, headers, pool or self._pool)
                else:
                    response = self._as_response(loads_relayable(await resp.read()), message)
                if message.get("method") == "tools/list" and self._speaks_modern():
                    response = self._tool_headers.learn(response)
                return response
            finally:
                resp.close()
        except ResponseTooLarge as exc:
            raise UpstreamUnavailable(self._name, str(exc)) from None
        except ConnectTimeout as exc:
            if exc.connecting:  # the address does not answer (a pool at its cap says nothing of it)
                raise UpstreamUnreachable(self._name, f"connection timed out ({exc})") from exc
            raise UpstreamUnavailable(self._name, f"connection timed out ({exc})") from exc
        except ConnectFailed as exc:
            raise UpstreamUnreachable(self._name, f"connection failed: {exc}") from exc
        except WireError as exc:
            raise UpstreamUnavailable(self._name, f"connection failed: {exc}") from exc
        except TooDeep as exc:
            reason = f"answered with JSON nested more than {MAX_DEPTH} levels deep"
            raise UpstreamUnavailable(self._name, reason) from exc
        except MessageError as exc:
            raise UpstreamUnavailable(
                self._name, f"sent a body that is not a JSON-RPC message: {exc}"
            ) from exc
        except EventStreamError as exc:
            raise UpstreamUnavailable(self._name, f"sent an event stream that cannot be read: {exc}") from exc

    async def listen(
        self, message: JSONObject, sink: MessageSink, headers: Mapping[str, str] | None, waiting: anyio.Event
    ) -> JSONObject:
        """A 2026-07-28 `subscriptions/listen`, held open in a slot of the listen pool (never on a
        connection the calls need: `listening.py`). Past `max_listen_streams` it waits for a
        slot, `waiting` set meanwhile so that the host's acknowledgement need not wait too."""
        streams = self._listen_streams
        if streams is None:
            return await self.request(message, sink, headers)
        if not streams.try_take():
            waiting.set()
            await streams.take()
        try:
            return await self.request(message, sink, headers, pool=streams.pool)
        finally:
            streams.give_back()

    def _as_response(self, parsed: object, message: JSONObject) -> JSONObject:
        """The one response a JSON body holds, as the answer to `message`. One under another id
        answers a request this POST did not make: it is dropped, and the call has no answer."""
        if not isinstance(parsed, dict) or "method" in parsed:
            raise MessageError(-32600, "expected one JSON-RPC response object")
        answered = parsed.get("id")
        if answered is None:
            parsed["id"] = message.get("id")
        elif answered != message.get("id"):
            self._strays.drop(parsed)
            raise MessageError(-32600, "a response to another request (its id was not this request's)")
        return parsed

    async def notify(self, message: JSONObject) -> None:
        await self._post_one_way(message)

    async def respond(self, message: JSONObject) -> None:
        await self._post_one_way(message)

    def start_listening(self, task_group: TaskGroup) -> None:
        """Open the GET stream through which the upstream sends messages tied to no request."""
        if self._modern_version is None and self._session_id is not None:
            start_guarded(task_group, f"upstream {self._name}: its GET stream", self._listen)
        else:
            self.listening.set()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.listening.set()
        if self._listen_scope is not None:
            self._listen_scope.cancel()
        if self._session_id is not None:
            # Best effort: an upstream also reaps sessions it no longer hears from. That includes
            # a session whose credential is gone (deleted, or refused for good): no DELETE then.
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(2),
                contextlib.suppress(WireError, CredentialError),
            ):
                (await self._pool.request("DELETE", await self._headers(None, None))).close()

    def _speaks_modern(self) -> bool:
        return self._modern_version is not None or self._protocol_version in MODERN_PROTOCOL_VERSIONS

    async def _headers(self, message: JSONObject | None, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {"accept": _ACCEPT, "content-type": "application/json"}
        if self._extra_headers is not None:
            headers.update(await self._extra_headers())
        if self._session_id is not None:
            headers["mcp-session-id"] = self._session_id
        if self._protocol_version is not None:
            headers["mcp-protocol-version"] = self._protocol_version
        modern = self._speaks_modern()
        if message is not None and message.get("method") == "initialize":
            # Before the revision is known: 2026-07-28 wants it, older servers ignore it.
            headers[MCP_METHOD_HEADER] = "initialize"
        elif modern and message is not None and "method" in message:
            # Also after an `initialize` the upstream answered with a 2026-07-28 version: that
            # revision's headers go with its version header.
            method = message["method"]
            headers[MCP_METHOD_HEADER] = method
            name_key = NAME_BEARING_METHODS.get(method)
            if name_key is not None:
                value = message.get("params", {}).get(name_key)
                if isinstance(value, str):
                    headers[MCP_NAME_HEADER] = encode_header_value(value)
            if method == "tools/call":
                headers.update(self._tool_headers.for_call(message))
        if extra:
            headers.update(extra)
        return headers

    async def _relay_stream(
        self,
        resp: Response,
        message: JSONObject,
        sink: MessageSink | None,
        headers: Mapping[str, str] | None,
        pool: Pool,
    ) -> JSONObject:
        """The response a call's event stream carries, what comes before it relayed.

        A stream that ends (or drops) before the response, after an event with an id, is resumed
        as Streamable HTTP says ("Resumability and Redelivery", SEP-1699: a server MAY close it
        then, and a disconnection is not a cancellation): after the `retry` the server last sent
        (else _RESUME_DEFAULT_S), a GET with `Last-Event-ID`, on which the server replays what
        the closed stream would have carried and goes on. A stream without an id cannot be
        resumed; nor one whose resumptions bring no new event _RESUME_ATTEMPTS times running.
        The call's deadline (the connector's) bounds it all."""
        request_id = message.get("id")
        decoder = EventDecoder(pool.max_body_bytes)
        failed = 0
        while True:
            seen = decoder.last_event_id
            try:
                answer = await self._read_events(resp, decoder, request_id, sink)
            except WireError:
                if not decoder.last_event_id:
                    raise  # dropped, and nothing to resume it from
                answer = None
            finally:
                resp.close()
            if answer is not None:
                return answer
            if not decoder.last_event_id:
                raise UpstreamUnavailable(self._name, "the response stream ended before the response")
            failed = 0 if decoder.last_event_id != seen else failed + 1
            if failed >= _RESUME_ATTEMPTS:
                reason = f"the response stream ended before the response, {failed} times after resuming it"
                raise UpstreamUnavailable(self._name, reason)
            resp = await self._resume(decoder, headers, pool)
            decoder.reconnected()

    async def _read_events(
        self, resp: Response, decoder: EventDecoder, request_id: object, sink: MessageSink | None
    ) -> JSONObject | None:
        """Relay what one connection of a call's stream carries; its response, or None if the
        connection ended first."""
        while True:
            chunk = await resp.chunk()
            for event in decoder.feed(chunk) if chunk else decoder.close():
                received = _message_in(event)
                if received is None:
                    continue
                if "method" not in received:
                    if received.get("id") == request_id:
                        return received  # closing the response lets the stream end on its own
                    self._strays.drop(received)  # an answer to a request not made on this stream
                    continue
                if sink is not None:
                    await sink.send(received)
                else:
                    await self._unsolicited(received)
            if not chunk:
                return None

    async def _resume(self, decoder: EventDecoder, extra: Mapping[str, str] | None, pool: Pool) -> Response:
        """The GET that resumes a call's stream after its last event, once the server's `retry`
        has passed (the server said how long to wait: it MUST be respected)."""
        retry_ms = decoder.retry_ms
        await anyio.sleep(_RESUME_DEFAULT_S if retry_ms is None else retry_ms / 1000)
        headers = await self._headers(None, extra)
        headers["accept"] = "text/event-stream"
        headers["last-event-id"] = decoder.last_event_id
        resp = await pool.request("GET", headers)
        if resp.status < 400 and resp.headers.get("content-type", "").startswith("text/event-stream"):
            return resp
        try:
            if resp.status in (401, 403):
                raise _unauthorized(self._name, resp)
            if resp.status == 404 and self._session_id is not None:
                raise UpstreamSessionExpired(self._name, "the upstream no longer knows our session")
        finally:
            resp.close()
        why = f"HTTP {resp.status}" if resp.status >= 400 else "not an event stream"
        reason = f"the response stream ended before the response, and resuming it was refused ({why})"
        raise UpstreamUnavailable(self._name, reason)

    async def _error_response(self, resp: Response, message: JSONObject) -> JSONObject:
        body = await resp.read()
        if resp.status in (401, 403):
            raise _unauthorized(self._name, resp)
        try:
            parsed = loads_relayable(body)
        except MessageError:
            parsed = None
        if isinstance(parsed, dict) and "error" in parsed:
            if resp.status == 404 and self._session_id is not None and parsed.get("id") is None:
                raise UpstreamSessionExpired(self._name, "the upstream no longer knows our session")
            return self._as_response(parsed, message)
        if resp.status == 404 and self._session_id is not None:
            raise UpstreamSessionExpired(self._name, "the upstream no longer knows our session")
        raise UpstreamUnavailable(self._name, f"answered HTTP {resp.status}")

    async def _post_one_way(self, message: JSONObject) -> None:
        body = dumps(message)  # TooDeep reaches the caller: the message's fault, not the upstream's
        try:
            async with asyncio.timeout(_ONE_WAY_S):
                resp = await self._pool.request("POST", await self._headers(message, None), body)
                try:
                    await resp.read()
                finally:
                    resp.close()
        except WireError as exc:
            raise UpstreamUnavailable(self._name, f"connection failed: {exc}") from exc
        except ResponseTooLarge as exc:
            raise UpstreamUnavailable(self._name, str(exc)) from None
        except TimeoutError:
            method = message.get("method", "response")
            raise UpstreamUnavailable(self._name, f"no answer to a {method} within {_ONE_WAY_S:g}s") from None
        if resp.status == 404 and self._session_id is not None:
            raise UpstreamSessionExpired(self._name, "the upstream no longer knows our session")
        if resp.status in (401, 403):
            raise _unauthorized(self._name, resp)
        if resp.status >= 400:
            logger.warning(
                "upstream %s answered HTTP %d to a %s", self._name, resp.status, message.get("method")
            )

    async def _listen(self) -> None:
        streams = self._listen_streams
        pool = self._pool if streams is None else streams.pool
        with anyio.CancelScope() as scope:
            self._listen_scope = scope
            while not self._closed:
                if streams is not None and not streams.try_take():
                    self.listening.set()  # a stream may be long in coming: calls do not wait for it
                    await streams.take()
                try:
                    headers = await self._headers(None, None)
                    headers["accept"] = "text/event-stream"
                    resp = await pool.request("GET", headers)
                    try:
                        self.listening.set()  # open, or refused: either way, nothing more to wait for
                        if resp.status == 405:
                            return  # this upstream offers no GET stream
                        if resp.status >= 400:
                            logger.info("upstream %s: GET stream refused (HTTP %d)", self._name, resp.status)
                            return
                        self.stream_open.set()
                        decoder = EventDecoder(pool.max_body_bytes)
                        while chunk := await resp.chunk():
                            for event in decoder.feed(chunk):
                                received = _message_in(event)
                                if received is not None:
                                    await self._unsolicited(received)
                    finally:
                        resp.close()
                except (WireError, MessageError, EventStreamError, ResponseTooLarge) as exc:
                    logger.debug("upstream %s: GET stream dropped: %s", self._name, exc)
                except Exception:  # this task lives in the gateway's task group: never let it end it
                    logger.exception("upstream %s: GET stream failed", self._name)
                finally:
                    if streams is not None:
                        streams.give_back()
                # A dropped listen stream is re-opened after a pause, as the SDK client does.
                await anyio.sleep(_LISTEN_RETRY_S)


def _unauthorized(name: str, resp: Response) -> UpstreamUnauthorized:
    """A 401 or 403, with the scope a 403 `insufficient_scope` challenge names (RFC 6750 3.1)."""
    challenge = resp.headers.get("www-authenticate")
    scope = None
    if resp.status == 403 and challenge:
        parsed = httpx2.Response(403, headers={"www-authenticate": challenge})  # what the SDK parses
        if extract_field_from_www_auth(parsed, "error") == "insufficient_scope":
            scope = extract_field_from_www_auth(parsed, "scope")
    reason = f"refused our credential (HTTP {resp.status})"
    if scope is not None:
        reason = f"needs scope {scope!r} for this (HTTP 403 insufficient_scope)"
    return UpstreamUnauthorized(name, reason, scope=scope)


def _message_in(event: Event) -> JSONObject | None:
    """The JSON-RPC message an event carries; None for priming events and keep-alives."""
    if not event.data:
        return None
    received = loads_relayable(event.data)
    return received if isinstance(received, dict) else None
