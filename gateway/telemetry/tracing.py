"""Spans by the OpenTelemetry semantic conventions for MCP (semantic-conventions-genai,
docs/gen-ai/mcp.md): a SERVER span per host request, and a CLIENT span per call it made
upstream; the two operation-duration histograms beside them (`otel_metrics.py`).

- The server span is named `{mcp.method.name} {target}` (the tool or prompt name as the host
  saw it; a resource's URI is an attribute, never in the name). Its parent is the host's
  `traceparent` (`params._meta`, else the HTTP header); its trace id is the one the record
  holds (`CallRecord.trace_id`).
- The client span is the gateway's hop toward the upstream: its span id is the one in the
  `traceparent` the gateway sent upstream (`CallRecord.span_id`), so the upstream's own spans
  are its children. Its time is the call's upstream time.

Both are built once the request has been answered, from what the proxy and the record already
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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
from mcp_types import PROTOCOL_VERSION_META_KEY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.sampling import Decision, StaticSampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
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
from gateway.protocol.tracecontext import TraceParent
from gateway.recording.recorder import CallRecord
from gateway.recording.redaction import Redactor
from gateway.telemetry.otlp import OtlpExport

__all__ = ["PeerAddress", "Tracing"]

logger = logging.getLogger(__name__)

_SCOPE = InstrumentationScope("mcpgw")
_SAMPLED, _NOT_SAMPLED = TraceFlags(TraceFlags.SAMPLED), TraceFlags(TraceFlags.DEFAULT)
_UNSET = Status(StatusCode.UNSET)
_MAX_STATUS_TEXT = 200
_TARGET = {"tools/call": "gen_ai.tool.name", "prompts/get": "gen_ai.prompt.name"}

# (client host, client port, server host, server port) of the HTTP request being served.
_PEER: contextvars.ContextVar[tuple[Any, Any, Any, Any] | None] = contextvars.ContextVar(
    "mcpgw_peer", default=None
)
_SERVED: contextvars.ContextVar[_Served | None] = contextvars.ContextVar("mcpgw_served", default=None)

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


class _Served:
    __slots__ = ("call",)

    def __init__(self) -> None:
        self.call: CallRecord | None = None


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

    async def serve(
        self, inner: Inner, session: Any, message: dict[str, Any], sink: Any, context: Any
    ) -> dict[str, Any]:
        """Serve one host request through `inner` (the proxy's own), then emit its spans."""
        started_ns, clock = time.time_ns(), time.perf_counter()
        served = _Served()
        token = _SERVED.set(served)
        response: dict[str, Any] | None = None
        failure: BaseException | None = None
        try:
            response = await inner(session, message, sink, context)
            return response
        except BaseException as exc:
            failure = exc
            raise
        finally:
            _SERVED.reset(token)
            try:
                self._emit(session, message, context, response, failure, served.call, started_ns, clock)
            except Exception:  # telemetry must never fail a call
                logger.warning("could not build the spans of a request", exc_info=True)

    def called(self, call: CallRecord) -> None:
        """The record of the call the request being served made (from `ObservedRecorder`)."""
        served = _SERVED.get()
        if served is not None:
            served.call = call

    def _emit(
        self,
        session: Any,
        message: dict[str, Any],
        context: Any,
        response: dict[str, Any] | None,
        failure: BaseException | None,
        call: CallRecord | None,
        started_ns: int,
        clock: float,
    ) -> None:
        seconds = time.perf_counter() - clock
        method: str = message["method"]
        params = message.get("params")
        params = params if isinstance(params, dict) else {}
        meta = params.get("_meta")
        meta = meta if isinstance(meta, dict) else {}
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
        metric = dict(attributes, **{"network.transport": "tcp", "network.protocol.name": "http"})
        if target_key and isinstance(target, str) and routed:
            metric[target_key] = target  # a name the catalogue knows: bounded
        if error_type is not None:
            metric["error.type"] = error_type
        if self._metrics is not None:
            self._metrics.server(seconds, metric)
            if call is not None and routed and call.upstream_s is not None:
                self._metrics.client(
                    call.upstream_s, self._client_attributes(call, method, error_type, metric=True)
                )
        if not self._tracing:
            return
        host = TraceParent.parse(meta.get("traceparent")) or TraceParent.parse(context.traceparent)
        trace_hex = call.trace_id if call is not None and call.trace_id else (host.trace_id if host else None)
        trace_id = int(trace_hex, 16) if trace_hex else random.getrandbits(128)
        parent = None
        if host is not None and host.trace_id == trace_hex:
            flags = TraceFlags(int(host.flags, 16))
            parent = SpanContext(trace_id, int(host.span_id, 16), is_remote=True, trace_flags=flags)
        name = f"{method} {target}" if isinstance(target, str) and target else method
        if not self._sampled(parent, trace_id, name):
            return
        attributes |= metric
        if isinstance(target, str) and target_key:
            attributes[target_key] = target
        if method.startswith("resources/") and isinstance(params.get("uri"), str):
            attributes["mcp.resource.uri"] = _shown_uri(params["uri"])
        if "id" in message and message["id"] is not None:
            attributes["jsonrpc.request.id"] = str(message["id"])
        if not modern:
            attributes["mcp.session.id"] = session.id  # a session only the handshake revisions have
        if error_type is not None and error_type.lstrip("-").isdigit():
            attributes["rpc.response.status_code"] = error_type
        if status_text is not None:
            status_text = self._redactor.redact_text(status_text)
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
        if self._capture and method == "tools/call":
            self._capture_content(attributes, params, response, call)
        server_ctx = SpanContext(trace_id, random.getrandbits(64), is_remote=False, trace_flags=_SAMPLED)
        ended_ns = started_ns + int(seconds * 1e9)
        status = _UNSET if error_type is None else Status(StatusCode.ERROR, status_text)
        self._export.queue(
            ReadableSpan(
                name,
                context=server_ctx,
                parent=parent,
                resource=self._resource,
                attributes=attributes,
                kind=SpanKind.SERVER,
                status=status,
                start_time=started_ns,
                end_time=ended_ns,
                instrumentation_scope=_SCOPE,
            )
        )
        if call is None or not routed or call.span_id is None or call.upstream_s is None:
            return
        client = self._client_attributes(call, method, error_type, metric=False)
        upstream_target = call.upstream_name if target_key else None
        # The upstream call ended as the call did, give or take the microseconds the gateway
        # spent on its answer; it lasted what the record says the upstream took.
        client_end = int((call.started_at + call.duration_s) * 1e9)
        self._export.queue(
            ReadableSpan(
                f"{method} {upstream_target}" if upstream_target else method,
                context=SpanContext(trace_id, int(call.span_id, 16), is_remote=False, trace_flags=_SAMPLED),
                parent=server_ctx,
                resource=self._resource,
                attributes=client,
                kind=SpanKind.CLIENT,
                status=status,
                start_time=client_end - int(call.upstream_s * 1e9),
                end_time=client_end,
                instrumentation_scope=_SCOPE,
            )
        )

    def _client_attributes(
        self, call: CallRecord, method: str, error_type: str | None, *, metric: bool
    ) -> dict[str, Any]:
        upstream = self._upstreams.get(call.upstream or "")
        attributes: dict[str, Any] = {"mcp.method.name": method}
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
