"""OTLP export of the gateway's traces and metrics (http/protobuf), with the OpenTelemetry SDK.

Configured by the standard environment variables and by the config's `telemetry:` section,
which mirrors them key by key (a key set in the file wins over its variable). Off unless an
endpoint is given (`telemetry.endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT` or the per-signal
variables); `OTEL_SDK_DISABLED=true` turns it off whatever else is set.

Nothing here runs on a call's path but `queue`: spans are handed to the SDK's
`BatchSpanProcessor`, whose own thread encodes and sends them; metrics are aggregated in
`otel_metrics.py` and sent by its thread. A collector that is slow, refuses or hangs holds up
that thread only, for at most the exporter's timeout per batch. A span that cannot be sent
(the queue full, or its batch's export failed) is dropped and counted: `dropped` is what
`/metrics` shows as `mcpgw_telemetry_dropped_total`. Metrics are cumulative, so an interval
that fails to export loses nothing: the next one carries its counts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from gateway.config.values import TelemetryConfig
from gateway.errors import TelemetryConfigError
from gateway.telemetry.otel_metrics import OperationMetrics

__all__ = [
    "DEFAULT_SERVICE_NAME",
    "OtlpExport",
    "OtlpSettings",
    "QuickSpanExporter",
    "TelemetryConfigError",
    "otlp_settings",
]

logger = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "mcpgw"
_MAX_QUEUE = 2048  # the SDK's default (OTEL_BSP_MAX_QUEUE_SIZE)
# OTLP SpanFlags: whether the parent's remoteness is known, and that it is remote.
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200


@dataclass(frozen=True, slots=True)
class OtlpSettings:
    traces_endpoint: str | None  # a full URL (…/v1/traces); None: traces off
    metrics_endpoint: str | None  # …/v1/metrics; None: metrics off
    headers: Mapping[str, str] | None  # None: the exporters read OTEL_EXPORTER_OTLP_*HEADERS
    timeout_s: float | None  # None: the exporters read OTEL_EXPORTER_OTLP_*TIMEOUT
    resource: Resource
    sampler: Sampler
    metrics_interval_ms: float | None  # None: OTEL_METRIC_EXPORT_INTERVAL or 60 s
    capture_content: bool
    max_content_bytes: int


def otlp_settings(config: TelemetryConfig, environ: Mapping[str, str]) -> OtlpSettings | None:
    """What to export where, from the config's section and the environment; None when off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    protocol = config.protocol or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip() or "http/protobuf"
    base = (config.endpoint or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()).rstrip("/")
    traces = _endpoint(config.traces, base, "traces", environ)
    metrics = _endpoint(config.metrics, base, "metrics", environ)
    if traces is None and metrics is None:
        return None
    if protocol != "http/protobuf":
        raise TelemetryConfigError(f"OTLP protocol {protocol!r} is not supported: use http/protobuf")
    interval = config.metrics_interval_s * 1000 if config.metrics_interval_s is not None else None
    if interval is None:
        try:
            interval = float(environ.get("OTEL_METRIC_EXPORT_INTERVAL", "")) or None
        except ValueError:
            interval = None
    return OtlpSettings(
        traces_endpoint=traces,
        metrics_endpoint=metrics,
        headers=config.headers,
        timeout_s=config.timeout_s,
        resource=_resource(config),
        sampler=_sampler(config, environ),
        metrics_interval_ms=interval,
        capture_content=config.capture_content,
        max_content_bytes=config.max_content_bytes,
    )


def _endpoint(wanted: bool, base: str, signal: str, environ: Mapping[str, str]) -> str | None:
    if not wanted:
        return None
    own = environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip()
    if own and not base:
        return own  # the per-signal variable is a full URL already
    return f"{base}/v1/{signal}" if base else None


def _resource(config: TelemetryConfig) -> Resource:
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; what is given here wins.
    attributes: dict[str, str] = dict(config.resource_attributes or {})
    if config.service_name is not None:
        attributes[SERVICE_NAME] = config.service_name
    resource = Resource.create(attributes)
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def _sampler(config: TelemetryConfig, environ: Mapping[str, str]) -> Sampler:
    name = (
        (config.sampler or environ.get("OTEL_TRACES_SAMPLER", "") or "parentbased_always_on").strip().lower()
    )
    arg = config.sampler_arg
    if arg is None:
        try:
            arg = float(environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
        except ValueError:
            arg = 1.0
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
    }
    if name in samplers:
        return samplers[name]
    if name == "traceidratio":
        return TraceIdRatioBased(arg)
    if name == "parentbased_traceidratio":
        return ParentBased(TraceIdRatioBased(arg))
    raise TelemetryConfigError(f"unknown OTEL_TRACES_SAMPLER {name!r}")


_KEY_VALUES_CACHED = 4096  # the attribute pairs kept encoded (method, tool, address: few distinct)
_BLOCKS_CACHED = 4096  # the sets of them (one per method, tool, outcome, host address, ...)
# Attributes whose values hardly repeat: kept, they would fill the cache within a few thousand
# calls and leave every later pair to be encoded anew (twice the export thread's CPU per span).
_UNCACHED = frozenset(
    {
        "jsonrpc.request.id",
        "client.port",
        "mcp.session.id",
        "mcp.resource.uri",
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result",
    }
)


class QuickSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter, with an encoding that costs a quarter of the SDK's.

    The SDK encodes each attribute of each span anew (most of the CPU telemetry costs per
    call); the gateway's spans repeat a handful of attribute sets (one per method, tool,
    outcome, ...), so each set is encoded once and merged into the spans that carry it; only
    a span's own values (its request id, the host's port, ...) are encoded for it. Only for what
    the gateway builds: one resource, one scope, no events, links without attributes. The
    message is the SDK's own but for the order of a span's attributes
    (`tests/gateway/telemetry/test_otlp.py` compares them); sending, retries and timeouts stay
    the exporter's. On an SDK whose exporter lacks
    the HTTP client this relies on, it falls back to the SDK's encoding.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pairs: dict[tuple[str, object], KeyValue] = {}
        self._blocks: dict[tuple[tuple[str, object], ...], bytes] = {}  # attribute sets, encoded

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        client = getattr(self, "_client", None)
        if client is None or getattr(self, "_shutdown", False) or not spans:
            return super().export(spans)
        sent = client.export(self.encode(spans))
        return SpanExportResult.SUCCESS if sent.success else SpanExportResult.FAILURE

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        request = ExportTraceServiceRequest()
        batch = request.resource_spans.add()
        batch.resource.attributes.extend([self._pair(k, v) for k, v in spans[0].resource.attributes.items()])
        scoped = batch.scope_spans.add()
        scope = spans[0].instrumentation_scope
        if scope is not None:
            scoped.scope.name = scope.name
            if scope.version:
                scoped.scope.version = scope.version
        out = scoped.spans
        for span in spans:
            context, parent = span.context, span.parent
            assert context is not None
            encoded = out.add(
                trace_id=context.trace_id.to_bytes(16, "big"),
                span_id=context.span_id.to_bytes(8, "big"),
                name=span.name,
                kind=span.kind.value + 1,  # OTLP counts from UNSPECIFIED = 0
                start_time_unix_nano=span.start_time,
                end_time_unix_nano=span.end_time,
                flags=_HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0),
            )
            if parent is not None:
                encoded.parent_span_id = parent.span_id.to_bytes(8, "big")
            if span.attributes:
                self._add_attributes(encoded, span.attributes)
            for link in span.links:
                linked = link.context
                encoded.links.add(
                    trace_id=linked.trace_id.to_bytes(16, "big"),
                    span_id=linked.span_id.to_bytes(8, "big"),
                    flags=_HAS_IS_REMOTE | (_IS_REMOTE if linked.is_remote else 0),
                )
            status = span.status
            encoded.status.code = status.status_code.value
            if status.description:
                encoded.status.message = status.description
        encoded_request: bytes = request.SerializeToString()
        return encoded_request

    def _add_attributes(self, encoded: Span, attributes: Mapping[str, object]) -> None:
        """The attributes of one span: those that repeat (all but `_UNCACHED`'s) as one block,
        encoded once per distinct set and merged in whole (a third of copying them pair by pair),
        then the span's own."""
        shared: list[tuple[str, object]] = []
        own: list[KeyValue] = []
        for key, value in attributes.items():
            if key in _UNCACHED:
                own.append(_encoded_pair(key, value))
            else:
                shared.append((key, value))
        if shared:
            held = tuple(shared)
            block = self._blocks.get(held)
            if block is None:
                block = Span(attributes=[self._pair(k, v) for k, v in shared]).SerializeToString()
                if len(self._blocks) >= _BLOCKS_CACHED:
                    self._blocks.clear()
                self._blocks[held] = block
            encoded.MergeFromString(block)
        if own:
            encoded.attributes.extend(own)

    def _pair(self, key: str, value: object) -> KeyValue:
        if key in _UNCACHED:
            return _encoded_pair(key, value)
        cached = self._pairs.get((key, value))
        if cached is not None:
            return cached
        pair = _encoded_pair(key, value)
        if len(self._pairs) >= _KEY_VALUES_CACHED:
            self._pairs.clear()  # what repeats now comes back at once; what did not is let go
        self._pairs[(key, value)] = pair
        return pair


def _encoded_pair(key: str, value: object) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


class _Counted(SpanExporter):
    """The OTLP exporter, counting the spans of every batch it could not deliver."""

    def __init__(self, inner: SpanExporter, export: OtlpExport) -> None:
        self._inner = inner
        self._export = export

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._export.taken(len(spans))
        try:
            outcome = self._inner.export(spans)
        except Exception:
            outcome = SpanExportResult.FAILURE
            logger.warning("could not export %d span(s)", len(spans), exc_info=True)
        if outcome is not SpanExportResult.SUCCESS:
            self._export.lost(len(spans))
        return outcome

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class OtlpExport:
    """The running export: a span queue with its sending thread, and a meter provider."""

    def __init__(self, settings: OtlpSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._waiting = 0  # spans queued and not yet taken by an export
        self._dropped = 0
        self._spans: BatchSpanProcessor | None = None
        self.metrics: OperationMetrics | None = None
        if settings.traces_endpoint is not None:
            exporter = QuickSpanExporter(
                endpoint=settings.traces_endpoint, headers=settings.headers, timeout=settings.timeout_s
            )
            self._spans = BatchSpanProcessor(_Counted(exporter, self), max_queue_size=_MAX_QUEUE)
        if settings.metrics_endpoint is not None:
            metric_exporter = OTLPMetricExporter(
                endpoint=settings.metrics_endpoint, headers=settings.headers, timeout=settings.timeout_s
            )
            self.metrics = OperationMetrics(metric_exporter, settings.resource, settings.metrics_interval_ms)

    @property
    def tracing(self) -> bool:
        return self._spans is not None

    def queue(self, span: ReadableSpan) -> None:
        """Hand a finished span to the sending thread; never blocks. On a full queue the span
        is dropped here, and counted: the SDK's processor would drop its oldest instead, and log
        a warning for each one (9 us a span, on every call while a collector is down)."""
        assert self._spans is not None
        with self._lock:
            if self._waiting >= _MAX_QUEUE:
                self._dropped += 1
                return
            self._waiting += 1
        self._spans.on_end(span)

    def taken(self, count: int) -> None:
        with self._lock:
            self._waiting = max(0, self._waiting - count)

    def lost(self, count: int) -> None:
        with self._lock:
            self._dropped += count

    def dropped(self) -> int:
        """Spans dropped so far: queue overflow and failed exports."""
        with self._lock:
            return self._dropped

    def shutdown(self) -> None:
        """Send what is queued (within a short deadline) and stop the threads. Blocking: run it
        in a worker thread."""
        if self._spans is not None:
            self._spans.shutdown()  # type: ignore[no-untyped-call]
        if self.metrics is not None:
            self.metrics.shutdown()
