"""`mcpgw stdio --url URL`: lets a stdio-only host (e.g. Claude Desktop) use a gateway URL.

The host starts `mcpgw stdio` as its MCP server; this process relays every message between the
host's stdin/stdout (the SDK's stdio transport) and the gateway's Streamable HTTP endpoint. The
API key comes from `MCPGW_API_KEY`, never from the command line (where other users of the
machine see it).

The HTTP side is the bridge's own (httpx2) rather than the SDK's client, because the bridge has
to outlive what ends that client, and a host cannot restart it:
- the gateway restarted: the bridge's session is gone (404), so it initialises again with the
  host's own `initialize` and `notifications/initialized`, and sends the request once more;
- the gateway is down: each request is answered with a JSON-RPC error naming the gateway's URL,
  one line on stderr says so, and the bridge carries on until the gateway is back;
- the host closed stdin: the answers to requests in flight are still written (for at most
  `_DRAIN_S`), the session is ended, and the bridge exits 0.
"""

from __future__ import annotations

import itertools
import logging
from typing import Protocol

import anyio
import httpx2
from anyio.abc import TaskGroup
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp_types import jsonrpc_message_adapter
from pydantic import ValidationError

from gateway.background import log_failure, start_guarded
from gateway.errors import MessageError
from gateway.protocol.jsonrpc import (
    INTERNAL_ERROR,
    UPSTREAM_UNAVAILABLE,
    JSONObject,
    dumps,
    error,
    is_request,
    loads,
)

logger = logging.getLogger(__name__)

GATEWAY_UNREACHABLE = UPSTREAM_UNAVAILABLE  # -32001: the server behind this hop cannot be reached
_DRAIN_S = 10.0  # how long answers in flight are awaited once the host has closed stdin
_END_SESSION_S = 5.0
_INITIALIZED: JSONObject = {"jsonrpc": "2.0", "method": "notifications/initialized"}


class _ToHost(Protocol):
    async def send(self, item: SessionMessage, /) -> None: ...


async def run_bridge(url: str, api_key: str | None) -> int:
    headers = {"x-api-key": api_key} if api_key else {}
    timeout = httpx2.Timeout(connect=10.0, read=None, write=30.0, pool=10.0)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as client,
        stdio_server() as (from_host, to_host),
        to_host,  # closed when done, so that the stdio transport ends
    ):
        async with anyio.create_task_group() as streams:
            bridge = _Bridge(url, client, to_host, streams)
            async with anyio.create_task_group() as requests:
                async for item in from_host:
                    if isinstance(item, Exception):
                        logger.warning("bridge: unreadable message from the host: %s", item)
                        continue
                    message = item.message.model_dump(by_alias=True, mode="json", exclude_unset=True)
                    if is_request(message):
                        requests.start_soon(bridge.request, message)
                    else:
                        await bridge.send(message)
                # The host closed stdin: what it asked for is still answered, for a while.
                requests.cancel_scope.deadline = anyio.current_time() + _DRAIN_S
            streams.cancel_scope.cancel()
        await bridge.end_session()
    return 0


class _SessionGone(Exception):
    """The gateway answered 404 for the bridge's session: it restarted, or ended the session."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)
        self.session_id = session_id


class _Refused(Exception):
    """The gateway would not open a session again; the message says how."""


class _Bridge:
    def __init__(self, url: str, client: httpx2.AsyncClient, to_host: _ToHost, streams: TaskGroup) -> None:
        self._url = url
        self._client = client
        self._to_host = to_host
        self._streams = streams  # where the session's GET stream runs
        self._session_id: str | None = None
        self._version: str | None = None  # the protocol version the gateway chose
        self._handshake: JSONObject | None = None  # the host's initialize, to open a session again
        self._reopening = anyio.Lock()
        self._replays = itertools.count(1)
        self._listening = anyio.CancelScope()
        self._down = False

    async def request(self, message: JSONObject) -> None:
        """Relay a host request; its answer reaches the host, whatever becomes of the gateway."""
        request_id = message["id"]
        try:
            if await self._post(message):
                return
            answer = error(request_id, INTERNAL_ERROR, "the gateway sent no answer")
        except httpx2.TransportError as exc:
            self._unreachable(exc)
            reason = f"the gateway at {self._url} is unreachable: {_reason(exc)}"
            answer = error(request_id, GATEWAY_UNREACHABLE, reason)
        except _Refused as exc:
            answer = error(request_id, INTERNAL_ERROR, str(exc))
        except Exception as exc:  # the bridge's own failure: this request's error, not the bridge's end
            log_failure(f"bridge: {message.get('method')}", exc)
            answer = error(request_id, INTERNAL_ERROR, "the bridge could not relay this request")
        await self._write(answer)

    async def send(self, message: JSONObject) -> None:
        """Relay a notification, or the host's answer to a request the gateway sent it."""
        try:
            await self._post(message)
        except httpx2.TransportError as exc:
            self._unreachable(exc)
            return
        except _Refused as exc:
            logger.warning("bridge: %s", exc)
            return
        except Exception as exc:  # the bridge's own failure: this message is lost, not the bridge
            log_failure(f"bridge: {_what(message)}", exc)
            return
        if message.get("method") == "notifications/initialized":
            self._listen()

    async def end_session(self) -> None:
        """The host is done: so is its session (best effort, briefly)."""
        if self._session_id is None:
            return
        with anyio.move_on_after(_END_SESSION_S):
            try:
                await self._client.delete(self._url, headers=self._headers(self._session_id))
            except httpx2.TransportError as exc:
                logger.info("bridge: could not end the session: %s", _reason(exc))

    async def _post(self, message: JSONObject) -> bool:
        """POST `message`; on a 404 for the session, open it again and POST once more. Whether a
        request's answer reached the host."""
        try:
            return await self._exchange(message, reopen=True)
        except _SessionGone as gone:
            await self._reopen(gone.session_id)
        return await self._exchange(message, reopen=False)

    async def _exchange(self, message: JSONObject, *, reopen: bool) -> bool:
        session_id = self._session_id
        headers = self._headers(session_id)
        async with self._client.stream(
            "POST", self._url, content=dumps(message), headers=headers
        ) as response:
            self._reachable()
            if response.status_code == 404 and session_id is not None and reopen and self._handshake:
                raise _SessionGone(session_id)
            if message.get("method") == "initialize" and response.status_code == 200:
                self._handshake = message
                self._session_id = response.headers.get("mcp-session-id")
            if not is_request(message):
                if response.status_code >= 400:
                    logger.warning(
                        "bridge: the gateway refused a %s: HTTP %d", _what(message), response.status_code
                    )
                return False
            return await self._relay(response, message)

    async def _relay(self, response: httpx2.Response, request: JSONObject) -> bool:
        """Pass on what the gateway sends in answer to `request`; whether its answer was among it."""
        if _media_type(response) == "text/event-stream":
            async for event in httpx2.EventSource(response):
                if await self._relay_one(event.data, request):
                    return True
            return False
        return await self._relay_one(await response.aread(), request)

    async def _relay_one(self, data: str | bytes, request: JSONObject) -> bool:
        message = _parsed(data)
        if message is None:
            return False
        answers = "method" not in message and ("result" in message or "error" in message)
        if answers:
            # Refusals (401, 404, …) carry a null id: the gateway had not read the request's.
            message = {**message, "id": request["id"]}
            if request.get("method") == "initialize":
                self._chosen(message)
        await self._write(message)
        return answers

    async def _reopen(self, gone: str) -> None:
        """The gateway no longer knows session `gone`: open one as the host did at first."""
        async with self._reopening:
            if self._session_id != gone:
                return  # a request that met the same 404 already has
            assert self._handshake is not None
            logger.info(
                "bridge: the gateway no longer knows this session (did it restart?); initialising again"
            )
            replay = {**self._handshake, "id": f"mcpgw-bridge-{next(self._replays)}"}
            response = await self._client.post(self._url, content=dumps(replay), headers=self._headers(None))
            session_id = response.headers.get("mcp-session-id")
            if response.status_code != 200 or not session_id:
                raise _Refused(f"the gateway would not open a session again: HTTP {response.status_code}")
            self._session_id = session_id
            if _media_type(response) == "application/json" and (answer := _parsed(response.content)):
                self._chosen(answer)
            await self._client.post(self._url, content=dumps(_INITIALIZED), headers=self._headers(session_id))
            self._listen()

    def _listen(self) -> None:
        """(Re)open the session's GET stream: what the gateway sends outside any request's answer."""
        self._listening.cancel()
        self._listening = anyio.CancelScope()
        start_guarded(
            self._streams, "bridge: the session's stream", self._listen_on, self._listening, self._session_id
        )

    async def _listen_on(self, scope: anyio.CancelScope, session_id: str | None) -> None:
        headers = {**self._headers(session_id), "accept": "text/event-stream"}
        with scope:
            try:
                async with self._client.stream("GET", self._url, headers=headers) as response:
                    if response.status_code != 200:
                        return
                    async for event in httpx2.EventSource(response):
                        if (message := _parsed(event.data)) is not None:
                            await self._write(message)
            except httpx2.TransportError as exc:
                logger.info("bridge: the session's stream ended: %s", _reason(exc))

    def _headers(self, session_id: str | None) -> dict[str, str]:
        headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
        if session_id is not None:
            headers["mcp-session-id"] = session_id
            if self._version is not None:
                headers["mcp-protocol-version"] = self._version
        return headers

    def _chosen(self, answer: JSONObject) -> None:
        result = answer.get("result")
        version = result.get("protocolVersion") if isinstance(result, dict) else None
        if isinstance(version, str):
            self._version = version

    async def _write(self, message: JSONObject) -> None:
        try:
            parsed = jsonrpc_message_adapter.validate_python(message, by_name=False)
        except ValidationError:
            logger.warning("bridge: the gateway sent something that is not a JSON-RPC message; dropped")
            return
        await self._to_host.send(SessionMessage(parsed))

    def _unreachable(self, exc: httpx2.TransportError) -> None:
        if not self._down:
            self._down = True
            logger.warning(
                "bridge: the gateway at %s is unreachable (%s); requests get errors until it is back",
                self._url,
                _reason(exc),
            )

    def _reachable(self) -> None:
        if self._down:
            self._down = False
            logger.info("bridge: the gateway at %s answers again", self._url)


def _parsed(data: str | bytes) -> JSONObject | None:
    if not data:
        return None
    try:
        message = loads(data)
    except MessageError:
        logger.warning("bridge: the gateway sent something that is not JSON; dropped")
        return None
    return message if isinstance(message, dict) else None


def _media_type(response: httpx2.Response) -> str:
    return response.headers.get("content-type", "").partition(";")[0].strip().lower()


def _what(message: JSONObject) -> str:
    method = message.get("method")
    return str(method) if method is not None else "response"


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
