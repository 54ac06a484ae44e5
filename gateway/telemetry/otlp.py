"""OTLP export of the gateway's traces and metrics (http/protobuf), with the OpenTelemetry SDK.

Configured by the standard environment variables and by the config's `telemetry:` section,
which mirrors them key by key (a key set in the file wins over its variable). Off unless an
endpoint is given (`telemetry.endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT` or the per-signal
variables); `OTEL_SDK_DISABLED=true` turns it off whatever else is set.

Nothing here runs on a call's path but `queue`: spans are handed to the SDK's
`BatchSpanProcessor`, whose own thread encodes and sends them; metrics are read and sent by a
`PeriodicExportingMetricReader`'s thread. A collector that is slow, refuses or hangs holds up
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

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
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

__all__ = ["DEFAULT_SERVICE_NAME", "OtlpExport", "OtlpSettings", "TelemetryConfigError", "otlp_settings"]

logger = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "mcpgw"
_MAX_QUEUE = 2048  # the SDK's default (OTEL_BSP_MAX_QUEUE_SIZE)
_SHUTDOWN_S = 2.0  # what the gateway's stop waits for the last spans at most


class TelemetryConfigError(ValueError):
    """The telemetry settings name something this gateway cannot do (a protocol other than
    http/protobuf, an unknown sampler)."""


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
        self.meters: MeterProvider | None = None
        if settings.traces_endpoint is not None:
            exporter = OTLPSpanExporter(
                endpoint=settings.traces_endpoint, headers=settings.headers, timeout=settings.timeout_s
            )
            self._spans = BatchSpanProcessor(_Counted(exporter, self), max_queue_size=_MAX_QUEUE)
        if settings.metrics_endpoint is not None:
            metric_exporter = OTLPMetricExporter(
                endpoint=settings.metrics_endpoint, headers=settings.headers, timeout=settings.timeout_s
            )
            reader = PeriodicExportingMetricReader(
                metric_exporter, export_interval_millis=settings.metrics_interval_ms
            )
            self.meters = MeterProvider(metric_readers=[reader], resource=settings.resource)

    @property
    def tracing(self) -> bool:
        return self._spans is not None

    def queue(self, span: ReadableSpan) -> None:
        """Hand a finished span to the sending thread; never blocks. A full queue drops its
        oldest span (the SDK's rule), which is counted."""
        assert self._spans is not None
        with self._lock:
            if self._waiting >= _MAX_QUEUE:
                self._dropped += 1
            else:
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
        if self.meters is not None:
            self.meters.shutdown(timeout_millis=_SHUTDOWN_S * 1000)
