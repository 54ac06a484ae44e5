"""What the gateway does with each message a host sends inside a session.

Requests are answered by the gateway itself (ping, the merged lists) or forwarded to the one
upstream that owns the named tool, prompt or resource. Host request ids pass upstream
unchanged: each host session has its own upstream sessions, so a host's ids are unique in each.
Only requests upstreams originate get gateway ids (see outbound.py), and their answers are
mapped back here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from gateway.background import log_failure
from gateway.core.catalogue import Kind, Route
from gateway.core.host_session import HostSession
from gateway.core.outbound import LOCAL_REQUEST_PREFIX
from gateway.core.router import Router
from gateway.core.tasks import TASK_METHODS, TaskRelay
from gateway.errors import (
    AuthRequired,
    CredentialError,
    OAuthError,
    RecordingFailed,
    RequestIdInUse,
    RoutingError,
    TooDeep,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.protocol.context import NO_CONTEXT, RequestContext
from gateway.protocol.elicitation import with_defaults
from gateway.protocol.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    LOG_LEVELS,
    METHOD_NOT_FOUND,
    REQUEST_CANCELLED,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNAVAILABLE,
    JSONObject,
    RequestId,
    error,
    notification,
    params_of,
    result,
)
from gateway.protocol.tracecontext import trace_for
from gateway.recording.recorder import CallRecord, Recorder, outcome_of
from gateway.telemetry.tracing import Tracing
from gateway.upstream.channel import MessageSink

logger = logging.getLogger(__name__)

Handler = Callable[[HostSession, JSONObject, MessageSink | None, RequestContext], Awaitable[JSONObject]]
CONNECT_META_KEY = "mcpgw/connect"
URL_ELICITATION_REQUIRED = -32042  # 2025-11-25's "URL elicitation required" error
RECORDED_METHODS = frozenset({"tools/call", "resources/read", "prompts/get", "completion/complete"})
_ROUTED_BY: dict[str, tuple[Kind, str]] = {
    "tools/call": ("tools", "name"),
    "prompts/get": ("prompts", "name"),
    "resources/read": ("resources", "uri"),
    "resources/subscribe": ("resources", "uri"),
    "resources/unsubscribe": ("resources", "uri"),
}


class Proxy:
    def __init__(
        self,
        router: Router,
        recorder: Recorder,
        tasks: TaskRelay | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.router = router
        self.tracing = tracing  # None unless telemetry is configured: then no tracing code runs
        self.recorder = recorder
        self.tasks = tasks or TaskRelay(router.upstream_names, recorder)
        self._handlers: dict[str, Handler] = {
            "ping": self._ping,
            "tools/list": self._list,
            "prompts/list": self._list,
            "resources/list": self._list,
            "resources/templates/list": self._list,
            "tools/call": self._routed,
            "prompts/get": self._routed,
            "resources/read": self._routed,
            "resources/subscribe": self._routed,
            "resources/unsubscribe": self._routed,
            "completion/complete": self._complete,
            "logging/setLevel": self._set_level,
        }
        self._handlers.update(dict.fromkeys(TASK_METHODS, self.tasks.request))

    async def answer(
        self, session: HostSession, message: JSONObject, sink: MessageSink | None, context: RequestContext
    ) -> JSONObject:
        """Serve one request of a session's host to its final response, whatever happens: the
        host may cancel it (notifications/cancelled: -32800, as the SDK's servers answer), and a
        failure of the gateway's own is this request's -32603, not the transport's 500."""
        request_id = message["id"]
        response: JSONObject | None = None
        try:
            with session.serving(request_id):
                response = await self.answered(session, message, sink, context)
        except RequestIdInUse as exc:
            return error(request_id, INVALID_REQUEST, f"Invalid Request: {exc}")
        return response or error(request_id, REQUEST_CANCELLED, "Request cancelled")

    async def answered(
        self, session: HostSession, message: JSONObject, sink: MessageSink | None, context: RequestContext
    ) -> JSONObject:
        """`request`, with a failure of the gateway's own answered as this request's -32603
        (2026-07-28 calls come here directly: their ids are not unique in a group, so they are
        not `serving` ones)."""
        try:
            return await self.request(session, message, sink, context)
        except Exception as exc:
            log_failure(f"session {session.id}: {message['method']}", exc)
            return error(message["id"], INTERNAL_ERROR, "The gateway could not complete this request")

    async def request(
        self, session: HostSession, message: JSONObject, sink: MessageSink | None, context: RequestContext
    ) -> JSONObject:
        if self.tracing is not None:
            return await self.tracing.serve(self._request, session, message, sink, context)
        return await self._request(session, message, sink, context)

    async def _request(
        self, session: HostSession, message: JSONObject, sink: MessageSink | None, context: RequestContext
    ) -> JSONObject:
        session.touch()
        handler = self._handlers.get(message["method"])
        if handler is None:
            return error(message["id"], METHOD_NOT_FOUND, f"Method not found: {message['method']}")
        return await handler(session, message, sink, context)

    async def notification(
        self, session: HostSession, message: JSONObject, context: RequestContext = NO_CONTEXT
    ) -> None:
        if self.tracing is not None:
            await self.tracing.notified(self._notification, session, message, context.traceparent)
            return
        await self._notification(session, message)

    async def _notification(self, session: HostSession, message: JSONObject) -> None:
        session.touch()
        method = message["method"]
        if method == "notifications/cancelled":
            # Cancelling the host's request cancels its upstream call, which tells the upstream.
            request_id = params_of(message).get("requestId")
            if not session.cancel_host_request(request_id) and session.link is not None:
                await session.link.cancel(request_id)  # another replica may be serving it
        elif method == "notifications/roots/list_changed":
            for upstream in session.open_upstreams():
                await _quietly(upstream.channel.notify(message))

    async def response(self, session: HostSession, message: JSONObject) -> None:
        """The host answered a request an upstream made (elicitation, sampling, roots, ping)."""
        session.touch()
        if session.questions.answered(message):
            return  # the answer to a question of the gateway's own, for a 2026-only upstream
        outbound = session.outbound.take(message.get("id"))
        if outbound is None and str(message.get("id")).startswith(LOCAL_REQUEST_PREFIX):
            return  # the answer to a request of the gateway's own (a URL elicitation)
        if outbound is None and session.link is not None and await session.link.answer(message):
            return  # another replica's upstream asked: the id names it
        if outbound is None:
            logger.info("session %s: a response to no pending request (id %r)", session.id, message.get("id"))
            return
        answer = with_defaults({**message, "id": outbound.original_id}, outbound.defaults)
        await _quietly(outbound.upstream.channel.respond(answer))

    async def _ping(
        self, session: HostSession, message: JSONObject, sink: MessageSink | None, context: RequestContext
    ) -> JSONObject:
        return result(message["id"], {})

    async def _list(
        self, session: HostSession, message: JSONObject, sink: MessageSink | None, context: RequestContext
    ) -> JSONObject:
        if params_of(message).get("cursor") is not None:
            return error(message["id"], INVALID_PARAMS, "Invalid cursor: this gateway returns complete lists")
        listing = await self.router.list_all(session, message, sink)
        if listing.missing:
            await _warn_of_missing(session, message["method"], listing.missing, sink, context)
        return result(message["id"], listing.result)

    async def _routed(
        self, session: HostSession, message: JSONObject, sink: MessageSink | None, context: RequestContext
    ) -> JSONObject:
        kind, field = _ROUTED_BY[message["method"]]
        params = params_of(message)
        name = params.get(field)
        if not isinstance(name, str):
            return error(message["id"], INVALID_PARAMS, f"Invalid params: {field!r} must be a string")
        return await self._forward(session, message, sink, context, kind, name, field)

    async def _complete(
        self, session: HostSession, message: JSONObject, sink: MessageSink | None, context: RequestContext
    ) -> JSONObject:
        ref = params_of(message).get("ref")
        if not isinstance(ref, dict):
            return error(message["id"], INVALID_PARAMS, "Invalid params: 'ref' must be an object")
        if ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
            return await self._forward(session, message, sink, context, "prompts", ref["name"], "ref.name")
        if ref.get("type") == "ref/resource" and isinstance(ref.get("uri"), str):
            return await self._forward(session, message, sink, context, "resources", ref["uri"], "ref.uri")
        return error(message["id"], INVALID_PARAMS, "Invalid params: unknown completion reference")

    async def _set_level(
        self, session: HostSession, message: JSONObject, sink: MessageSink | None, context: RequestContext
    ) -> JSONObject:
        level = params_of(message).get("level")
        if not isinstance(level, str):
            return error(message["id"], INVALID_PARAMS, "Invalid params: 'level' must be a string")
        await session.set_log_level(level)
        for upstream in session.open_upstreams():
            if "logging" in upstream.capabilities:
                try:
                    await session.forward(upstream.name, message, None)
                except (UpstreamError, CredentialError, TooDeep) as exc:
                    logger.info("session %s: setLevel on %s failed: %s", session.id, upstream.name, exc)
        return result(message["id"], {})

    async def _forward(
        self,
        session: HostSession,
        message: JSONObject,
        sink: MessageSink | None,
        context: RequestContext,
        kind: Kind,
        name: str,
        field: str,
    ) -> JSONObject:
        if message["method"] not in RECORDED_METHODS:
            try:
                found = await self.router.route(session, kind, name, message)
                forwarded = _renamed(message, field, found.original) if found.original != name else message
                return await session.forward(found.upstream, forwarded, sink, context)
            except (RoutingError, UpstreamError, CredentialError, TooDeep) as exc:
                return _error_for(message, session, exc)[0]
        started, clock = time.time(), time.perf_counter()
        request_id = message["id"]
        trace, traced = trace_for(message, context.traceparent)
        route: Route | None = None
        upstream_s: float | None = None
        upstream_started: float | None = None
        response: JSONObject | None = None
        outcome = "cancelled"  # unless the call gets further: the host, or the gateway stopping
        invocation_id: str | None = None  # chosen here only for a task, whose end finishes the row
        try:
            route = await self.router.route(session, kind, name, traced)
            forwarded = _renamed(traced, field, route.original) if route.original != name else traced
            upstream_started = time.perf_counter()
            try:
                if route.connect:
                    response = await self._connect(session, route.upstream, request_id)
                else:
                    response = await session.forward(route.upstream, forwarded, sink, context)
                    response, invocation_id = self.tasks.created(session, route.upstream, response)
            finally:
                upstream_s = time.perf_counter() - upstream_started
            outcome = outcome_of(response)
        except (RoutingError, UpstreamError, CredentialError, TooDeep) as exc:
            response, outcome = _error_for(message, session, exc)
            if isinstance(exc, AuthRequired):
                await _offer_elicitation(session, exc, sink)
        finally:
            # Runs when cancelled too: a cancelled call is recorded before the host hears of it.
            answered = response or error(request_id, REQUEST_CANCELLED, "Request cancelled")
            call = CallRecord(
                session_id=session.record_id,
                method=message["method"],
                name=name,
                upstream=route.upstream if route else None,
                upstream_name=route.original if route else None,
                request_id=request_id,
                params=params_of(message),
                response=answered,
                outcome=outcome,
                started_at=started,
                duration_s=time.perf_counter() - clock,
                upstream_s=upstream_s,
                upstream_started_at=None
                if upstream_started is None
                else started + (upstream_started - clock),
                trace_id=trace.trace_id,
                invocation_id=invocation_id,
                span_id=trace.span_id,
            )
            try:
                with anyio.CancelScope(shield=True):
                    await self.recorder.record(call)
            except RecordingFailed as exc:
                # The upstream did the work, but an unrecorded answer must not reach the host.
                logger.error("session %s: call %r not recorded: %s", session.id, request_id, exc)
                response = error(
                    request_id,
                    INTERNAL_ERROR,
                    "The gateway could not record this call: its record is unavailable",
                )
        return answered if response is None else response

    async def _connect(self, session: HostSession, upstream: str, request_id: RequestId) -> JSONObject:
        """The connect tool: a link while the account is not connected, else says it is."""
        await session.upstream(upstream)  # raises AuthRequired without a usable credential
        return result(request_id, {"content": [_text(f"Your {upstream} account is connected.")]})


def _error_for(
    message: JSONObject, session: HostSession, exc: UpstreamError | RoutingError | CredentialError | TooDeep
) -> tuple[JSONObject, str]:
    """The host's answer to a request the gateway could not complete, and its recorded outcome."""
    request_id = message["id"]
    if isinstance(exc, TooDeep):  # the host's own message: it cannot be passed on
        return error(request_id, exc.code, f"Invalid params: {exc.message}"), "denied"
    if isinstance(exc, AuthRequired):
        return _auth_required(message, session, exc), "auth_required"
    if isinstance(exc, OAuthError) and not exc.permanent:  # an outage at the authorization server
        return error(
            request_id, UPSTREAM_UNAVAILABLE, f"Could not refresh the credential: {exc}"
        ), "upstream_error"
    if isinstance(exc, CredentialError):
        if message["method"] == "tools/call":
            return result(request_id, {"content": [_text(str(exc))], "isError": True}), "denied"
        return error(request_id, INVALID_REQUEST, str(exc)), "denied"
    if isinstance(exc, RoutingError):
        return error(request_id, INVALID_PARAMS, str(exc), exc.data), "denied"
    if isinstance(exc, UpstreamTimeout):
        return error(request_id, UPSTREAM_TIMEOUT, str(exc)), "timeout"
    return error(request_id, UPSTREAM_UNAVAILABLE, str(exc)), "upstream_error"


def _auth_required(message: JSONObject, session: HostSession, exc: AuthRequired) -> JSONObject:
    """A tool result the user can act on (hosts show tool errors to the model and the user);
    other requests get an error carrying the same URL."""
    text = (
        f"{exc.upstream} needs you to connect your account first ({exc.reason}). "
        f"Open {exc.url} to connect it, then try again."
    )
    elicitation = {"mode": "url", "elicitationId": exc.flow_id, "url": exc.url, "message": text}
    if message["method"] == "tools/call":
        meta = {CONNECT_META_KEY: {"upstream": exc.upstream, "url": exc.url}}
        return result(message["id"], {"content": [_text(text)], "isError": True, "_meta": meta})
    if session.handshake.protocol_version == "2025-11-25":
        return error(message["id"], URL_ELICITATION_REQUIRED, text, {"elicitations": [elicitation]})
    return error(message["id"], INVALID_REQUEST, text, {"url": exc.url})


async def _offer_elicitation(session: HostSession, exc: AuthRequired, sink: MessageSink | None) -> None:
    """Also ask a host that can show URL elicitations (2025-11-25) to open the link itself."""
    elicitation = session.handshake.capabilities.get("elicitation")
    if not isinstance(elicitation, dict) or "url" not in elicitation:
        return
    params = {"mode": "url", "elicitationId": exc.flow_id, "url": exc.url,
              "message": f"Connect your {exc.upstream} account to continue."}  # fmt: skip
    request = {
        "jsonrpc": "2.0",
        "id": session.outbound.local_id(),
        "method": "elicitation/create",
        "params": params,
    }
    with anyio.move_on_after(1):  # best effort: the tool result carries the URL anyway
        await (sink or session.listen).send(request)


async def _warn_of_missing(
    session: HostSession,
    method: str,
    missing: dict[str, str],
    sink: MessageSink | None,
    context: RequestContext,
) -> None:
    """Tell the host which upstreams a list it asked for lacks, and why: a warning log message,
    on the list's own response stream if the host takes one, else on its GET stream (where a
    2026-07-28 host, which must ask for log messages in each request, gets none)."""
    if session.log_level is not None and LOG_LEVELS.get(session.log_level, 0) > LOG_LEVELS["warning"]:
        return
    what = "resource templates" if method == "resources/templates/list" else method.split("/")[0]
    warnings = []
    for name, reason in missing.items():
        text = f"Upstream {name!r} is unavailable, so its {what} are missing from this list: {reason}"
        data = {"message": text, "upstream": name, "error": reason}
        warnings.append(
            notification("notifications/message", {"level": "warning", "logger": "mcpgw", "data": data})
        )
    if sink is not None and context.event_stream:
        for warning in warnings:
            await sink.send(warning)
        return
    with anyio.move_on_after(1):  # best effort: a GET stream that does not read holds the list up 1s at most
        for warning in warnings:
            await session.listen.send(warning)


def _text(text: str) -> JSONObject:
    return {"type": "text", "text": text}


def _renamed(message: JSONObject, field: str, original: str) -> JSONObject:
    params: dict[str, Any] = dict(params_of(message))
    if field.startswith("ref."):
        params["ref"] = {**params["ref"], field[4:]: original}
    else:
        params[field] = original
    return {**message, "params": params}


async def _quietly(pending: Awaitable[None]) -> None:
    try:
        await pending
    except (UpstreamError, CredentialError, TooDeep) as exc:
        logger.info("could not pass a message upstream: %s", exc)
