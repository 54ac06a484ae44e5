"""Hosts speaking the stateless 2026-07-28 revision: one self-contained POST per request.

There is no `initialize` and no `Mcp-Session-Id`; each request carries its protocol version,
client info and capabilities in `params._meta`. The gateway still groups a host's requests into
one session per (API key, client name+version), closed after an idle gap, and that group owns
the upstream sessions its requests use (their ids are remapped: many host processes may share
a group). Cancelling is closing the response stream.

This revision has no server-to-host requests. When a handshake-era upstream asks for
elicitation or sampling mid-call, the gateway answers the host with an `InputRequiredResult`
and keeps the upstream call waiting; the host's retry (same request, plus `inputResponses` and
the `requestState` the gateway minted) carries the answers up, and the call goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    InboundLadderRejection,
    InboundModernRoute,
    classify_inbound_request,
)
from mcp_types.jsonrpc import HEADER_MISMATCH
from mcp_types.methods import CLIENT_REQUESTS, SPEC_CLIENT_METHODS
from mcp_types.version import LATEST_HANDSHAKE_VERSION, MODERN_PROTOCOL_VERSIONS
from starlette.types import Receive, Send

from gateway.background import start_guarded
from gateway.cluster import Cluster, owned, owner_of
from gateway.core.host_session import HostSession
from gateway.core.proxy import Proxy
from gateway.core.registry import SessionRegistry
from gateway.core.tasks import header_mismatch, offered_extensions
from gateway.errors import (
    CredentialError,
    HostRefusal,
    OwnerGone,
    RecordingFailed,
    SessionLimit,
    UpstreamError,
)
from gateway.host.asgi import (
    ResponseStream,
    send_bytes,
    send_json,
    wait_for_disconnect,
    wait_for_disconnect_or,
)
from gateway.host.shutdown import Shutdown
from gateway.host.subscriptions import listen_ended, serve_listen
from gateway.principal import Principal
from gateway.protocol.context import RequestContext
from gateway.protocol.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    LOG_LEVELS,
    METHOD_NOT_FOUND,
    JSONObject,
    error,
    is_request,
    meta_of,
    params_of,
    result,
)
from gateway.protocol.revisions import to_modern_response, with_server_info
from gateway.upstream.connector import Handshake

logger = logging.getLogger(__name__)

SUSPENDED_TTL_S = 600.0
_WATCH_AFTER_S = 0.05  # an inline call is watched for the host closing its stream after this long
_LOG_LEVEL_META_KEY = "io.modelcontextprotocol/logLevel"
# What an upstream may ask a host mid-call: elicitation, sampling, roots/list.
_INPUT_CAPABILITIES = ("elicitation", "sampling", "roots")
Event = tuple[Literal["notify", "ask", "done"], JSONObject]
RESUME = "resume"  # a suspended call's retry, forwarded to the replica holding the call


@dataclass(slots=True)
class _Call:
    """One host request in flight, possibly across several InputRequired rounds."""

    session: HostSession
    principal: Principal
    method: str
    events: MemoryObjectReceiveStream[Event]
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    log_level: int | None = None
    expires_at: float = 0.0


class _CallSink:
    """Where the upstream's related messages go while a call runs: queued for the host handler."""

    def __init__(self, events: MemoryObjectSendStream[Event]) -> None:
        self._events = events

    async def send(self, message: JSONObject) -> None:
        await self._events.send(("ask" if "id" in message else "notify", message))


@dataclass(slots=True)
class StatelessHandler:
    registry: SessionRegistry
    proxy: Proxy
    capabilities: JSONObject
    server_info: JSONObject
    task_group: TaskGroup
    shutdown: Shutdown  # the server stopping: the listen streams end
    cluster: Cluster | None = None  # on replicas: a retry landing here may resume a call elsewhere
    _suspended: dict[str, _Call] = field(default_factory=dict)

    async def handle(
        self, message: JSONObject, headers: dict[str, str], principal: Principal, receive: Receive, send: Send
    ) -> None:
        if not is_request(message):
            # This revision defines no host-to-server notifications or responses over HTTP.
            await send_bytes(send, 202, b"", [])
            return
        route = classify_inbound_request(message, headers=headers)
        request_id = message["id"]
        if isinstance(route, InboundLadderRejection):
            status = ERROR_CODE_HTTP_STATUS.get(route.code, 400)
            raise HostRefusal(status, route.code, route.message, request_id=request_id, data=route.data)
        if (mismatch := header_mismatch(message, headers)) is not None:
            raise HostRefusal(400, HEADER_MISMATCH, mismatch, request_id=request_id)
        if _removed_in(route.protocol_version, message["method"]):
            status, text = ERROR_CODE_HTTP_STATUS[METHOD_NOT_FOUND], f"Method not found: {message['method']}"
            raise HostRefusal(status, METHOD_NOT_FOUND, text, request_id=request_id)
        if message["method"] == "server/discover":
            await send_json(send, 200, result(message["id"], await self._discover()))
            return
        try:
            session = await self._group(principal, route)
        except RecordingFailed as exc:
            logger.error("refusing a request whose session could not be recorded: %s", exc)
            text = "The gateway cannot record sessions right now"
            raise HostRefusal(503, INTERNAL_ERROR, text, request_id=request_id) from None
        except SessionLimit as exc:
            raise HostRefusal(exc.status, INVALID_REQUEST, str(exc), request_id=request_id) from None
        if message["method"] == "subscriptions/listen":
            try:
                held = self.registry.listening(principal)
                held.__enter__()
            except SessionLimit as exc:
                raise HostRefusal(exc.status, INVALID_REQUEST, str(exc), request_id=request_id) from None
            try:
                await self._listen(session, message, receive, send)
            finally:
                held.__exit__(None, None, None)
            return
        self._expire_suspended()
        state = params_of(message).get("requestState")
        call = self._suspended.pop(state, None) if isinstance(state, str) else None
        if call is not None and not principal.same_caller(call.principal):
            self._suspended[state] = call  # type: ignore[index]
            call = None
        level = meta_of(message).get(_LOG_LEVEL_META_KEY)
        log_level = LOG_LEVELS.get(level) if isinstance(level, str) else None
        owner = owner_of(state) if call is None and self.cluster is not None else None
        # Suspended on another replica: it goes on there (sending the call again here would run
        # it twice), unless that replica holds it no longer.
        if (
            owner is not None
            and owner != self.cluster.instance_id  # type: ignore[union-attr]
            and await self._resume_elsewhere(owner, message, principal, log_level, receive, send)
        ):
            return
        if call is not None:
            await self._answer_inputs(call, params_of(message).get("inputResponses"))
        elif _can_answer_input(route.client_capabilities):
            call = self._start(session, principal, message, headers)
        else:
            await self._answer_inline(session, message, headers, log_level, receive, send)
            return
        call.log_level = log_level
        await self._drive(call, message["id"], receive, send)

    async def _answer_inline(
        self,
        session: HostSession,
        message: JSONObject,
        headers: dict[str, str],
        log_level: int | None,
        receive: Receive,
        send: Send,
    ) -> None:
        """A call from a host that cannot be asked for input: run in the request's own task.

        No InputRequired round can follow, so the call needs no task, queue or task group of
        its own: the relay to the host is direct, a few tenths of a millisecond less per call.
        Calls that may be suspended keep their own task: one suspended in the request's task
        would outlive its response, and uvicorn waits for such tasks before it shuts down.
        """
        stream = ResponseStream(send, [], True)
        sink = _DirectSink(session, stream, log_level)
        # asyncio's own timeout, never due unless the host closes the stream, as the call's
        # cancellation: about two thirds of the cost of an anyio cancel scope. Its cancellation is
        # delivered once, so the call's clean-up (telling the upstream, recording the call as
        # cancelled) runs as it did under the scope's shield.
        gone = asyncio.timeout(None)
        watcher: asyncio.Future[None] | None = None

        def watch() -> None:
            nonlocal watcher
            watcher = asyncio.ensure_future(_expire_on_disconnect(receive, gone))

        # Closing the response stream is this revision's cancellation; it is watched for once
        # the call has taken a moment: most are answered sooner, and a task per call to watch
        # costs more than the call's own routing.
        later = asyncio.get_running_loop().call_later(_WATCH_AFTER_S, watch)
        try:
            async with gone:
                response = await self.proxy.answered(session, message, sink, RequestContext.of(headers))
        except TimeoutError:
            if gone.expired():
                return  # the host is gone: nobody to answer
            raise
        finally:
            later.cancel()
            if watcher is not None:
                watcher.cancel()
        answer = to_modern_response(message["method"], {**response, "id": message["id"]})
        await stream.finish(with_server_info(answer, self.server_info), _status_of(answer))

    async def _listen(self, session: HostSession, message: JSONObject, receive: Receive, send: Send) -> None:
        stream = ResponseStream(send, [], True)
        closed = anyio.Event()
        gone = True
        async with anyio.create_task_group() as tg:

            async def until_closed() -> None:
                nonlocal gone
                gone = await wait_for_disconnect_or(receive, session.ended, self.shutdown)
                closed.set()

            tg.start_soon(until_closed)
            await serve_listen(session, self.proxy.router, message, stream, closed)
            tg.cancel_scope.cancel()
        if not gone:  # the gateway ended it: the revision's graceful end is the listen request's result
            await stream.finish(listen_ended(message["id"]))

    def _start(
        self, session: HostSession, principal: Principal, message: JSONObject, headers: dict[str, str]
    ) -> _Call:
        sender, events = anyio.create_memory_object_stream[Event](64)
        call = _Call(session, principal, message["method"], events)

        async def run() -> None:
            async with sender:
                with call.scope:
                    # A failure of the gateway's own must reach this call's host, not end the group.
                    context = RequestContext.of(headers)
                    response = await self.proxy.answered(session, message, _CallSink(sender), context)
                    with contextlib.suppress(anyio.BrokenResourceError):  # the host gave up on it
                        await sender.send(("done", response))

        start_guarded(self.task_group, f"session {session.id}: a suspendable call", run)
        return call

    async def _drive(self, call: _Call, request_id: Any, receive: Receive, send: Send) -> None:
        """Relay the call's events to this host request until it completes or needs input."""
        stream = ResponseStream(send, [], True)
        answer: JSONObject | None = None
        suspended = False
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                await wait_for_disconnect(receive)
                call.scope.cancel()  # the host closed the stream: that is its cancellation
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            async for kind, payload in call.events:
                if kind == "notify":
                    if _wanted(call.log_level, payload):
                        await stream.send(payload)
                    continue
                if kind == "ask":
                    answer, suspended = self._suspend(call, request_id, payload), True
                else:
                    answer = to_modern_response(call.method, {**payload, "id": request_id})
                break
            tg.cancel_scope.cancel()
        if not suspended:
            call.events.close()  # finished, or abandoned by the host: no later round will read it
        if answer is None:
            return
        await stream.finish(with_server_info(answer, self.server_info), _status_of(answer))

    async def _resume_elsewhere(
        self,
        owner: str,
        message: JSONObject,
        principal: Principal,
        log_level: int | None,
        receive: Receive,
        send: Send,
    ) -> bool:
        """Have replica `owner` resume the call it suspended, relaying what it streams; False if
        it holds no such call (expired, or not this caller's), which is then served as here."""
        assert self.cluster is not None
        params = params_of(message)
        body: JSONObject = {
            "state": params.get("requestState"),
            "inputResponses": params.get("inputResponses"),
            "caller": [principal.organisation_id, principal.api_key_id, principal.grant_id],
            "id": message["id"],
            "logLevel": log_level,
        }
        stream = ResponseStream(send, [], True)
        answer: JSONObject | None = None
        gone = False
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                nonlocal gone
                await wait_for_disconnect(receive)
                gone = True
                tg.cancel_scope.cancel()  # the host closed the stream: the owner cancels the call

            tg.start_soon(watch)
            try:
                answer = await self.cluster.forward(owner, RESUME, body, stream.send)
            except OwnerGone:
                text = "The gateway replica holding this call stopped: the call is lost"
                answer = error(message["id"], INTERNAL_ERROR, text)
            tg.cancel_scope.cancel()
        if gone:
            return True
        if answer is None:
            return False
        await stream.finish(answer, _status_of(answer))
        return True

    async def resume_here(
        self, body: JSONObject, emit: Callable[[JSONObject], Awaitable[None]]
    ) -> JSONObject | None:
        """Another replica's host retried a call suspended here: go on with it, `emit`ting what
        it sends the host, to its answer (or its next `input_required`, suspended here again)."""
        state, caller = body.get("state"), body.get("caller")
        call = self._suspended.pop(state, None) if isinstance(state, str) else None
        if call is None:
            return None
        who = call.principal
        if caller != [who.organisation_id, who.api_key_id, who.grant_id]:
            self._suspended[state] = call  # type: ignore[index]
            return None
        level = body.get("logLevel")
        call.log_level = level if isinstance(level, int) else None
        await self._answer_inputs(call, body.get("inputResponses"))
        request_id = body.get("id")
        answer: JSONObject | None = None
        suspended = False
        try:
            async for kind, payload in call.events:
                if kind == "notify":
                    if _wanted(call.log_level, payload):
                        await emit(payload)
                    continue
                if kind == "ask":
                    answer, suspended = self._suspend(call, request_id, payload), True
                else:
                    answer = to_modern_response(call.method, {**payload, "id": request_id})
                break
        except anyio.get_cancelled_exc_class():
            call.scope.cancel()  # the host closed its stream on the other replica
            raise
        finally:
            if not suspended:
                call.events.close()
        if answer is None:
            answer = error(request_id, INTERNAL_ERROR, "The gateway could not complete this request")
        return with_server_info(answer, self.server_info)

    def _suspend(self, call: _Call, request_id: Any, ask: JSONObject) -> JSONObject:
        token = owned(secrets.token_urlsafe(32), None if self.cluster is None else self.cluster.instance_id)
        call.expires_at = time.monotonic() + SUSPENDED_TTL_S
        self._suspended[token] = call
        request = {"method": ask["method"], "params": ask.get("params", {})}
        return result(
            request_id,
            {"inputRequests": {ask["id"]: request}, "requestState": token, "resultType": "input_required"},
        )

    async def _answer_inputs(self, call: _Call, responses: Any) -> None:
        if not isinstance(responses, dict):
            return
        for key, value in responses.items():
            outbound = call.session.outbound.take(key)
            if outbound is None:
                continue
            answer = (
                result(outbound.original_id, value)
                if isinstance(value, dict)
                else error(outbound.original_id, INVALID_PARAMS, "the host sent no usable answer")
            )
            try:
                await outbound.upstream.channel.respond(answer)
            except Exception as exc:
                logger.info("could not pass an input response upstream: %s", exc)

    def _expire_suspended(self) -> None:
        now = time.monotonic()
        for token, call in list(self._suspended.items()):
            if call.expires_at < now:
                del self._suspended[token]
                call.scope.cancel()
                call.events.close()

    async def _discover(self) -> JSONObject:
        capabilities = {k: v for k, v in self.capabilities.items() if k != "logging"}
        if extensions := await offered_extensions(self.registry.connectors):
            capabilities["extensions"] = extensions
        return {
            "supportedVersions": list(MODERN_PROTOCOL_VERSIONS),
            "capabilities": capabilities,
            "cacheScope": "private",
            "ttlMs": 0,
            "resultType": "complete",
            "_meta": {"io.modelcontextprotocol/serverInfo": self.server_info},
        }

    async def _group(self, principal: Principal, route: InboundModernRoute) -> HostSession:
        """The session this request belongs to: one per (API key, client name+version)."""
        info = route.client_info if isinstance(route.client_info, dict) else {}
        capabilities = route.client_capabilities
        handshake = Handshake(
            LATEST_HANDSHAKE_VERSION, capabilities if isinstance(capabilities, dict) else {}, info
        )
        return await self.registry.group(principal, handshake, route.protocol_version)


class _DirectSink:
    """Related messages of an inline call, straight onto the host's response stream."""

    def __init__(self, session: HostSession, stream: ResponseStream, log_level: int | None) -> None:
        self._session = session
        self._stream = stream
        self._log_level = log_level

    async def send(self, message: JSONObject) -> None:
        if "id" not in message:
            if _wanted(self._log_level, message):
                await self._stream.send(message)
            return
        # An upstream asking a host that declared it cannot answer: refuse at once, as that
        # host would, rather than leave the upstream waiting for the call's timeout.
        outbound = self._session.outbound.take(message["id"])
        if outbound is not None:
            refusal = error(outbound.original_id, METHOD_NOT_FOUND, "The host does not support this request")
            try:
                await outbound.upstream.channel.respond(refusal)
            except (UpstreamError, CredentialError) as exc:
                logger.info("could not refuse an upstream request: %s", exc)


def _removed_in(version: str, method: str) -> bool:
    """A method of an earlier revision that `version` dropped (ping, logging/setLevel, the
    resources/subscribe pair, initialize): not found, though the gateway serves it to
    handshake-era hosts."""
    return method in SPEC_CLIENT_METHODS and (method, version) not in CLIENT_REQUESTS


def _can_answer_input(capabilities: object) -> bool:
    """Whether the host declared a capability an upstream's request to it would need."""
    return isinstance(capabilities, dict) and any(k in capabilities for k in _INPUT_CAPABILITIES)


def _wanted(log_level: int | None, message: JSONObject) -> bool:
    if message.get("method") != "notifications/message":
        return True
    level = LOG_LEVELS.get(str(params_of(message).get("level")))
    return log_level is not None and level is not None and level >= log_level


def _status_of(answer: JSONObject) -> int:
    code = answer["error"].get("code") if isinstance(answer.get("error"), dict) else None
    return ERROR_CODE_HTTP_STATUS.get(code, 200) if isinstance(code, int) else 200


async def _expire_on_disconnect(receive: Receive, gone: asyncio.Timeout) -> None:
    await wait_for_disconnect(receive)
    gone.reschedule(asyncio.get_running_loop().time())
