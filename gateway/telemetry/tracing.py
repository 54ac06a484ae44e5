"""Spans by the OpenTelemetry semantic conventions for MCP (semantic-conventions-genai,
docs/gen-ai/mcp.md): a SERVER span per host request and notification, and a CLIENT span per
call it made upstream; the two operation-duration histograms beside them (`otel_metrics.py`).

- The server span is named `{mcp.method.name} {target}` (the tool or prompt name as the host
  saw it; a resource's URI is an attribute, never in the name). Its parent is the host's
  `traceparent` (`params._meta`, else the HTTP header); its trace id is the one the record
  holds (`CallRecord.trace_id`). `initialize`, which the endpoint answers before any session
  exists, and the host's notifications (`notifications/initialized`, `notifications/cancelled`,
  ...) get one too: named by their method, with no `jsonrpc.request.id` on a notification.
- The client span is the gateway's hop toward the upstream: its span id is the one in the
  `traceparent` the gateway sent upstream (`CallRecord.span_id`), so the upstream's own spans
  are its children. It starts when the upstream call starts and lasts the call's upstream
  time; its `mcp.protocol.version` is the one the upstream session negotiated (`hop.py`).
- A task that outlives its `tools/call` (the tasks extension) gets an INTERNAL span
  `task {tool}`: from the call's start until a `tasks/get` shows its end, a child of the
  call's server span and linked to that `tasks/get`'s server span.

All are built once the request has been answered, from what the proxy and the record already
know, and handed to the export thread (`otlp.py`): no span lives while a call runs, and
nothing of this runs at all unless telemetry is configured (`Proxy` checks one attribute).

What a span never carries: arguments and results (unless `telemetry.capture_content`, then
redacted by the record's rules and capped), headers, keys, tokens, a resource URI's query or
fragment, or an error's text when the error carries data (a connect link travels there).
"""

from __future__ import annotations

import contextvars
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
from mcp_types import PROTOCOL_VERSION_META_KEY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.sampling import Decision, StaticSampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config.values import UpstreamConfig
from gateway.errors import HostRefusal
from gateway.protocol.tracecontext import TraceParent
from gateway.recording.recorder import CallRecord, TaskEnded
from gateway.recording.redaction import Redactor
from gateway.telemetry.hop import HOP, Hop
from gateway.telemetry.otlp import OtlpExport
from store import TASK_PENDING

__all__ = ["PeerAddress", "Tracing"]

logger = logging.getLogger(__name__)

_SCOPE = InstrumentationScope("mcpgw")
_SAMPLED, _NOT_SAMPLED = TraceFlags(TraceFlags.SAMPLED), TraceFlags(TraceFlags.DEFAULT)
_UNSET = Status(StatusCode.UNSET)
_MAX_STATUS_TEXT = 200
_TARGET = {"tools/call": "gen_ai.tool.name", "prompts/get": "gen_ai.prompt.name"}
# Every host request and notification reaches the gateway over HTTP (Streamable or legacy SSE).
_OVER_HTTP = {"network.transport": "tcp", "network.protocol.name": "http"}
# What a task's span repeats of its tools/call's (never content: that stays on the call's span).
_TASK_ATTRIBUTES = ("mcp.method.name", "mcp.protocol.version", "gen_ai.operation.name", "gen_ai.tool.name")
_MAX_TASKS = 4096  # tasks awaiting their end, per process; past it the oldest get no span
S = TypeVar("S")

# (client host, client port, server host, server port) of the HTTP request being served.
_PEER: contextvars.ContextVar[tuple[Any, Any, Any, Any] | None] = contextvars.ContextVar(
    "mcpgw_peer", default=None
)

Inner = Callable[[Any, dict[str, Any], Any, Any], Awaitable[dict[str, Any]]]


class PeerAddress:
    """ASGI middleware (only with tracing on): the request's addresses, for its server span."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client, server = scope.get("client") or (None, None), scope.get("server") or (None, None)
        token = _PEER.set((client[0], client[1], server[0], server[1]))
        try:
            await self.app(scope, receive, send)
        finally:
            _PEER.reset(token)


@dataclass(frozen=True, slots=True)
class _TaskStart:
    name: str  # its tools/call's span name
    server: SpanContext  # its tools/call's server span
    started_ns: int
    attributes: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _Upstream:
    transport: str  # network.transport: tcp | pipe
    attributes: Mapping[str, str | int]


def _upstream_of(config: UpstreamConfig) -> _Upstream:
    if config.transport == "stdio" or config.url is None:
        return _Upstream("pipe", {"network.transport": "pipe"})
    parts = urlsplit(config.url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    attributes: dict[str, str | int] = {"network.transport": "tcp", "network.protocol.name": "http"}
    if parts.hostname:
        attributes |= {"server.address": parts.hostname, "server.port": port}
    return _Upstream("tcp", attributes)


class Tracing:
    def __init__(self, export: OtlpExport, upstreams: tuple[UpstreamConfig, ...], redactor: Redactor) -> None:
        self._export = export
        self._tracing = export.tracing
        self._metrics = export.metrics
        self._resource = export.settings.resource
        sampler = export.settings.sampler
        # always_on/always_off decide without a parent context: skip building one.
        self._static = (
            sampler.get_description() == "AlwaysOnSampler" if isinstance(sampler, StaticSampler) else None
        )
        self._sampler = sampler
        self._upstreams = {up.name: _upstream_of(up) for up in upstreams}
        self._capture = export.settings.capture_content
        self._redactor = redactor
        self._tasks: OrderedDict[str, _TaskStart] = OrderedDict()  # by invocation id, oldest first

    async def serve(
        self, inner: Inner, session: Any, message: dict[str, Any], sink: Any, context: Any
    ) -> dict[str, Any]:
        """Serve one host request through `inner` (the proxy's own), then emit its spans."""
        started_ns, clock = time.time_ns(), time.perf_counter()
        hop = Hop()
        token = HOP.set(hop)
        response: dict[str, Any] | None = None
        failure: BaseException | None = None
        try:
            response = await inner(session, message, sink, context)
            return response
        except BaseException as exc:
            failure = exc
            raise
        finally:
            HOP.reset(token)
            try:
                self._emit(session, message, context, response, failure, hop, started_ns, clock)
            except Exception:  # telemetry must never fail a call
                logger.warning("could not build the spans of a request", exc_info=True)

    async def initialize(
        self, opening: Awaitable[tuple[S, dict[str, Any]]], message: dict[str, Any], traceparent: str | None
    ) -> tuple[S, dict[str, Any]]:
        """Open a host session (`opening`: the endpoint's own `initialize`), then emit its span."""
        started_ns, clock = time.time_ns(), time.perf_counter()
        opened: tuple[S, dict[str, Any]] | None = None
        failure: BaseException | None = None
        try:
            opened = await opening
            return opened
        except BaseException as exc:
            failure = exc
            raise
        finally:
            try:
                self._handshake(message, traceparent, opened, failure, started_ns, clock)
            except Exception:
                logger.warning("could not build the span of an initialize", exc_info=True)

    async def notified(
        self,
        inner: Callable[[Any, dict[str, Any]], Awaitable[None]],
        session: Any,
        message: dict[str, Any],
        traceparent: str | None,
    ) -> None:
        """Take one host notification through `inner` (the proxy's own), then emit its span."""
        started_ns, clock = time.time_ns(), time.perf_counter()
        failure: BaseException | None = None
        try:
            await inner(session, message)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            try:
                self._notification(session, message, traceparent, failure, started_ns, clock)
            except Exception:
                logger.warning("could not build the span of a notification", exc_info=True)

    def called(self, call: CallRecord) -> None:
        """The record of the call the request being served made (from `ObservedRecorder`)."""
        hop = HOP.get()
        if hop is not None:
            hop.call = call

    def task_ended(self, end: TaskEnded) -> None:
        """A task ended, as the request being served (a `tasks/get`) showed it."""
        hop = HOP.get()
        if hop is not None:
            hop.ended = end

    def _emit(
        self,
        session: Any,
        message: dict[str, Any],
        context: Any,
        response: dict[str, Any] | None,
        failure: BaseException | None,
        hop: Hop,
        started_ns: int,
        clock: float,
    ) -> None:
        seconds = time.perf_counter() - clock
        call = hop.call if isinstance(hop.call, CallRecord) else None
        method: str = message["method"]
        params, meta = _params_and_meta(message)
        # A 2026-07-28 request names its revision itself; its group's handshake is the upstreams'.
        version = meta.get(PROTOCOL_VERSION_META_KEY)
        if not isinstance(version, str):
            version = session.handshake.protocol_version
        modern = version in MODERN_PROTOCOL_VERSIONS or session.announces_on_listen_only
        error_type, status_text = _error_of(response, failure)
        attributes: dict[str, Any] = {"mcp.method.name": method, "mcp.protocol.version": version}
        target_key = _TARGET.get(method)
        target = params.get("name") if target_key else None
        if method == "tools/call":
            attributes["gen_ai.operation.name"] = "execute_tool"
        routed = call is not None and call.upstream is not None
        metric = dict(attributes, **_OVER_HTTP)
        if target_key and isinstance(target, str) and routed:
            metric[target_key] = target  # a name the catalogue knows: bounded
        if error_type is not None:
            metric["error.type"] = error_type
        if self._metrics is not None:
            self._metrics.server(seconds, metric)
            if call is not None and routed and call.upstream_s is not None:
                client_metric = self._client_attributes(call, method, error_type, hop.version, metric=True)
                self._metrics.client(call.upstream_s, client_metric)
        if not self._tracing:
            return
        name = f"{method} {target}" if isinstance(target, str) and target else method
        begun = self._begin(meta, context.traceparent, call.trace_id if call is not None else None, name)
        if begun is None:
            return
        trace_id, parent = begun
        attributes |= metric
        if isinstance(target, str) and target_key:
            attributes[target_key] = target
        if method.startswith("resources/") and isinstance(params.get("uri"), str):
            attributes["mcp.resource.uri"] = _shown_uri(params["uri"])
        if self._capture and method == "tools/call":
            self._capture_content(attributes, params, response, call)
        server = self._server_span(
            name,
            attributes,
            trace_id,
            parent,
            message.get("id"),
            None if modern else session.id,  # a session only the handshake revisions have
            error_type,
            status_text,
            started_ns,
            seconds,
        )
        if isinstance(hop.ended, TaskEnded):
            self._task_span(hop.ended, server)
        if call is None or not routed or call.span_id is None or call.upstream_s is None:
            return
        client = self._client_attributes(call, method, error_type, hop.version, metric=False)
        upstream_target = call.upstream_name if target_key else None
        if call.upstream_started_at is not None:
            client_start = int(call.upstream_started_at * 1e9)
        else:  # an older record: the upstream call ended as the call did, give or take
            client_start = int((call.started_at + call.duration_s - call.upstream_s) * 1e9)
        client_ctx = SpanContext(trace_id, int(call.span_id, 16), is_remote=False, trace_flags=_SAMPLED)
        status = _UNSET if error_type is None else Status(StatusCode.ERROR, self._shown(status_text))
        self._export.queue(
            ReadableSpan(
                f"{method} {upstream_target}" if upstream_target else method,
                context=client_ctx,
                parent=server,
                resource=self._resource,
                attributes=client,
                kind=SpanKind.CLIENT,
                status=status,
                start_time=client_start,
                end_time=client_start + int(call.upstream_s * 1e9),
                instrumentation_scope=_SCOPE,
            )
        )
        if call.invocation_id is not None and call.outcome == TASK_PENDING:
            self._task_started(call.invocation_id, name, server, started_ns, attributes)

    def _handshake(
        self,
        message: dict[str, Any],
        traceparent: str | None,
        opened: tuple[Any, dict[str, Any]] | None,
        failure: BaseException | None,
        started_ns: int,
        clock: float,
    ) -> None:
        seconds = time.perf_counter() - clock
        attributes: dict[str, Any] = {"mcp.method.name": "initialize"}
        answer = opened[1].get("result") if opened is not None else None
        if isinstance(answer, dict) and isinstance(answer.get("protocolVersion"), str):
            attributes["mcp.protocol.version"] = answer["protocolVersion"]
        attributes |= _OVER_HTTP
        error_type: str | None
        status_text: str | None
        if isinstance(failure, HostRefusal):  # its JSON-RPC error, as the host is answered
            error_type, status_text = str(failure.code), failure.message[:_MAX_STATUS_TEXT]
        else:
            error_type, status_text = _error_of(opened[1] if opened is not None else None, failure)
        if error_type is not None:
            attributes["error.type"] = error_type
        if self._metrics is not None:
            self._metrics.server(seconds, attributes)
        if not self._tracing:
            return
        _, meta = _params_and_meta(message)
        begun = self._begin(meta, traceparent, None, "initialize")
        if begun is not None:
            session_id = opened[0].id if opened is not None else None
            self._server_span(
                "initialize", dict(attributes), *begun, message.get("id"), session_id,
                error_type, status_text, started_ns, seconds,
            )  # fmt: skip

    def _notification(
        self,
        session: Any,
        message: dict[str, Any],
        traceparent: str | None,
        failure: BaseException | None,
        started_ns: int,
        clock: float,
    ) -> None:
        seconds = time.perf_counter() - clock
        method: str = message["method"]
        attributes: dict[str, Any] = {
            "mcp.method.name": method,
            "mcp.protocol.version": session.handshake.protocol_version,
            **_OVER_HTTP,
        }
        error_type, _ = _error_of(None, failure) if failure is not None else (None, None)
        if error_type is not None:
            attributes["error.type"] = error_type
        if self._metrics is not None:
            self._metrics.server(seconds, attributes)
        if not self._tracing:
            return
        params, meta = _params_and_meta(message)
        begun = self._begin(meta, traceparent, None, method)
        if begun is None:
            return
        attributes = dict(attributes)
        if method == "notifications/resources/updated" and isinstance(params.get("uri"), str):
            attributes["mcp.resource.uri"] = _shown_uri(params["uri"])
        # No jsonrpc.request.id: a notification has none (a cancellation names another's).
        self._server_span(method, attributes, *begun, None, session.id, error_type, None, started_ns, seconds)

    def _begin(
        self, meta: Mapping[str, Any], header: str | None, recorded: str | None, name: str
    ) -> tuple[int, SpanContext | None] | None:
        """The trace and the remote parent of a server span, or None when it is not sampled.
        The parent is the host's `traceparent` (`_meta`, else the header); the trace, the one
        the record holds (`recorded`), else the host's, else a new one."""
        host = TraceParent.parse(meta.get("traceparent")) or TraceParent.parse(header)
        trace_hex = recorded or (host.trace_id if host is not None else None)
        trace_id = int(trace_hex, 16) if trace_hex else random.getrandbits(128)
        parent = None
        if host is not None and host.trace_id == trace_hex:
            flags = TraceFlags(int(host.flags, 16))
            parent = SpanContext(trace_id, int(host.span_id, 16), is_remote=True, trace_flags=flags)
        if not self._sampled(parent, trace_id, name):
            return None
        return trace_id, parent

    def _server_span(
        self,
        name: str,
        attributes: dict[str, Any],
        trace_id: int,
        parent: SpanContext | None,
        request_id: object,
        session_id: str | None,
        error_type: str | None,
        status_text: str | None,
        started_ns: int,
        seconds: float,
    ) -> SpanContext:
        """Queue a SERVER span with what every one of them carries; return its context."""
        if request_id is not None:
            attributes["jsonrpc.request.id"] = str(request_id)
        if session_id is not None:
            attributes["mcp.session.id"] = session_id
        if error_type is not None and error_type.lstrip("-").isdigit():
            attributes["rpc.response.status_code"] = error_type
        peer = _PEER.get()
        if peer is not None:
            client_host, client_port, server_host, server_port = peer
            if client_host:
                attributes["client.address"] = client_host
                if client_port:
                    attributes["client.port"] = client_port
            if server_host:
                attributes["server.address"] = server_host
                if server_port:
                    attributes["server.port"] = server_port
        context = SpanContext(trace_id, random.getrandbits(64), is_remote=False, trace_flags=_SAMPLED)
        status = _UNSET if error_type is None else Status(StatusCode.ERROR, self._shown(status_text))
        self._export.queue(
            ReadableSpan(
                name,
                context=context,
                parent=parent,
                resource=self._resource,
                attributes=attributes,
                kind=SpanKind.SERVER,
                status=status,
                start_time=started_ns,
                end_time=started_ns + int(seconds * 1e9),
                instrumentation_scope=_SCOPE,
            )
        )
        return context

    def _shown(self, status_text: str | None) -> str | None:
        return None if status_text is None else self._redactor.redact_text(status_text)

    def _task_started(
        self,
        invocation_id: str,
        name: str,
        server: SpanContext,
        started_ns: int,
        attributes: Mapping[str, Any],
    ) -> None:
        """Keep what the span of a task this call started needs, until a `tasks/get` shows its end."""
        kept = {key: attributes[key] for key in _TASK_ATTRIBUTES if key in attributes}
        self._tasks[invocation_id] = _TaskStart(name, server, started_ns, kept)
        while len(self._tasks) > _MAX_TASKS:
            self._tasks.popitem(last=False)

    def _task_span(self, end: TaskEnded, observed: SpanContext) -> None:
        """The span of a task that outlived its `tools/call`: from the call's start to the
        `tasks/get` that showed its end, a child of the call's server span, linked to that
        `tasks/get`'s. A task started on another replica (or before a restart) has none."""
        start = self._tasks.pop(end.invocation_id, None)
        if start is None:
            return
        attributes = dict(start.attributes, **{"mcpgw.task.outcome": end.outcome})
        status = _UNSET
        if end.outcome not in ("ok", "task_pending"):
            attributes["error.type"] = end.outcome
            status = Status(StatusCode.ERROR)
        context = SpanContext(
            start.server.trace_id, random.getrandbits(64), is_remote=False, trace_flags=_SAMPLED
        )
        self._export.queue(
            ReadableSpan(
                f"task {start.name}",
                context=context,
                parent=start.server,
                resource=self._resource,
                attributes=attributes,
                links=(Link(observed),),
                kind=SpanKind.INTERNAL,
                status=status,
                start_time=start.started_ns,
                end_time=max(start.started_ns, int(end.ended_at * 1e9)),
                instrumentation_scope=_SCOPE,
            )
        )

    def _client_attributes(
        self, call: CallRecord, method: str, error_type: str | None, version: str | None, *, metric: bool
    ) -> dict[str, Any]:
        upstream = self._upstreams.get(call.upstream or "")
        attributes: dict[str, Any] = {"mcp.method.name": method}
        if version is not None:
            attributes["mcp.protocol.version"] = version  # what the upstream session negotiated
        if upstream is not None:
            attributes |= upstream.attributes
        target_key = _TARGET.get(method)
        if target_key and call.upstream_name:
            attributes[target_key] = call.upstream_name
        if method == "tools/call":
            attributes["gen_ai.operation.name"] = "execute_tool"
        if error_type is not None:
            attributes["error.type"] = error_type
        if metric:
            return attributes
        attributes["mcpgw.upstream"] = call.upstream
        if method.startswith("resources/") and call.upstream_name:
            attributes["mcp.resource.uri"] = _shown_uri(call.upstream_name)
        if call.request_id is not None:
            attributes["jsonrpc.request.id"] = str(call.request_id)
        return attributes

    def _sampled(self, parent: SpanContext | None, trace_id: int, name: str) -> bool:
        if self._static is not None:
            return self._static
        context: Context | None = (
            set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None
        )
        decision = self._sampler.should_sample(context, trace_id, name, SpanKind.SERVER).decision
        return decision is not Decision.DROP

    def _capture_content(
        self,
        attributes: dict[str, Any],
        params: Mapping[str, Any],
        response: dict[str, Any] | None,
        call: CallRecord | None,
    ) -> None:
        arguments, _ = self._redactor.render(params.get("arguments"))
        if arguments is not None:
            attributes["gen_ai.tool.call.arguments"] = arguments
        # A result only when it came from the upstream and succeeded: a connect link is never one.
        if response is not None and call is not None and call.outcome == "ok" and "result" in response:
            result, _ = self._redactor.render(response["result"])
            if result is not None:
                attributes["gen_ai.tool.call.result"] = result


def _params_and_meta(message: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    params = message.get("params")
    params = params if isinstance(params, dict) else {}
    meta = params.get("_meta")
    return params, meta if isinstance(meta, dict) else {}


def _error_of(
    response: dict[str, Any] | None, failure: BaseException | None
) -> tuple[str | None, str | None]:
    """error.type by the conventions (the JSON-RPC code as text, `tool_error`), and a status text."""
    if failure is not None:
        if isinstance(failure, anyio.get_cancelled_exc_class()):
            return "cancelled", None
        return type(failure).__qualname__, None
    if response is None:
        return "cancelled", None
    error = response.get("error")
    if isinstance(error, dict):
        text = error.get("message")
        # An error with data may carry a connect link or an elicitation URL: its text stays out.
        shown = text[:_MAX_STATUS_TEXT] if isinstance(text, str) and "data" not in error else None
        return str(error.get("code", "_OTHER")), shown
    result = response.get("result")
    if isinstance(result, dict) and result.get("isError") is True:
        return "tool_error", None
    return None, None


def _shown_uri(uri: str) -> str:
    """A resource URI without its query or fragment, where a token could be."""
    return uri.split("?", 1)[0].split("#", 1)[0]
