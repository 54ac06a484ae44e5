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
- A task that outlives its `tools/call` gets a span of its own (`task_spans.py`).

All are built once the request has been answered, from what the proxy and the record already
know, and handed to the export thread (`otlp.py`): no span lives while a call runs, and
nothing of this runs at all unless telemetry is configured (`Proxy` checks one attribute).
Which attributes, and what never is one: `conventions.py`; the request's addresses: `peer.py`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from mcp_types import PROTOCOL_VERSION_META_KEY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, StaticSampler
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, set_span_in_context

from gateway.config.values import UpstreamConfig
from gateway.errors import HostRefusal
from gateway.protocol.tracecontext import TraceParent
from gateway.recording.recorder import CallRecord, TaskEnded
from gateway.recording.redaction import Redactor
from gateway.telemetry.conventions import (
    MAX_STATUS_TEXT,
    OVER_HTTP,
    TARGET,
    client_attributes,
    error_of,
    params_and_meta,
    shown_uri,
    upstream_address,
)
from gateway.telemetry.hop import HOP, Hop
from gateway.telemetry.otlp import OtlpExport
from gateway.telemetry.peer import add_peer
from gateway.telemetry.spans import finished, new_context, status_of
from gateway.telemetry.task_spans import TaskSpans
from store import TASK_PENDING

__all__ = ["Tracing"]

logger = logging.getLogger(__name__)

S = TypeVar("S")

Inner = Callable[[Any, dict[str, Any], Any, Any], Awaitable[dict[str, Any]]]


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
        self._upstreams = {up.name: upstream_address(up) for up in upstreams}
        self._capture = export.settings.capture_content
        self._redactor = redactor
        self._tasks = TaskSpans(export, self._resource)

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
        params, meta = params_and_meta(message)
        # A 2026-07-28 request names its revision itself; its group's handshake is the upstreams'.
        version = meta.get(PROTOCOL_VERSION_META_KEY)
        if not isinstance(version, str):
            version = session.handshake.protocol_version
        modern = version in MODERN_PROTOCOL_VERSIONS or session.announces_on_listen_only
        error_type, status_text = error_of(response, failure)
        attributes: dict[str, Any] = {"mcp.method.name": method, "mcp.protocol.version": version}
        target_key = TARGET.get(method)
        target = params.get("name") if target_key else None
        if method == "tools/call":
            attributes["gen_ai.operation.name"] = "execute_tool"
        routed = call is not None and call.upstream is not None
        upstream = self._upstreams.get(call.upstream) if call is not None and call.upstream else None
        metric = dict(attributes, **OVER_HTTP)
        if target_key and isinstance(target, str) and routed:
            metric[target_key] = target  # a name the catalogue knows: bounded
        if error_type is not None:
            metric["error.type"] = error_type
        if self._metrics is not None:
            self._metrics.server(seconds, metric)
            if call is not None and routed and call.upstream_s is not None:
                client_metric = client_attributes(
                    call, method, error_type, hop.version, upstream, metric=True
                )
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
            attributes["mcp.resource.uri"] = shown_uri(params["uri"])
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
            self._tasks.ended(hop.ended, server)
        if call is None or not routed or call.span_id is None or call.upstream_s is None:
            return
        client = client_attributes(call, method, error_type, hop.version, upstream, metric=False)
        upstream_target = call.upstream_name if target_key else None
        if call.upstream_started_at is not None:
            client_start = int(call.upstream_started_at * 1e9)
        else:  # an older record: the upstream call ended as the call did, give or take
            client_start = int((call.started_at + call.duration_s - call.upstream_s) * 1e9)
        self._export.queue(
            finished(
                f"{method} {upstream_target}" if upstream_target else method,
                new_context(trace_id, int(call.span_id, 16)),
                server,
                self._resource,
                client,
                SpanKind.CLIENT,
                status_of(error_type, self._shown(status_text)),
                client_start,
                client_start + int(call.upstream_s * 1e9),
            )
        )
        if call.invocation_id is not None and call.outcome == TASK_PENDING:
            self._tasks.started(call.invocation_id, name, server, started_ns, attributes)

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
        attributes |= OVER_HTTP
        error_type: str | None
        status_text: str | None
        if isinstance(failure, HostRefusal):  # its JSON-RPC error, as the host is answered
            error_type, status_text = str(failure.code), failure.message[:MAX_STATUS_TEXT]
        else:
            error_type, status_text = error_of(opened[1] if opened is not None else None, failure)
        if error_type is not None:
            attributes["error.type"] = error_type
        if self._metrics is not None:
            self._metrics.server(seconds, attributes)
        if not self._tracing:
            return
        _, meta = params_and_meta(message)
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
            **OVER_HTTP,
        }
        error_type, _ = error_of(None, failure) if failure is not None else (None, None)
        if error_type is not None:
            attributes["error.type"] = error_type
        if self._metrics is not None:
            self._metrics.server(seconds, attributes)
        if not self._tracing:
            return
        params, meta = params_and_meta(message)
        begun = self._begin(meta, traceparent, None, method)
        if begun is None:
            return
        attributes = dict(attributes)
        if method == "notifications/resources/updated" and isinstance(params.get("uri"), str):
            attributes["mcp.resource.uri"] = shown_uri(params["uri"])
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
        add_peer(attributes)
        context = new_context(trace_id)
        self._export.queue(
            finished(
                name,
                context,
                parent,
                self._resource,
                attributes,
                SpanKind.SERVER,
                status_of(error_type, self._shown(status_text)),
                started_ns,
                started_ns + int(seconds * 1e9),
            )
        )
        return context

    def _shown(self, status_text: str | None) -> str | None:
        return None if status_text is None else self._redactor.redact_text(status_text)

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
