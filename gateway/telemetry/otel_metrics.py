"""The two operation histograms of the OpenTelemetry conventions for MCP, on OTLP.

`mcp.server.operation.duration`: each host request, from when the gateway took it to its
answer; `mcp.client.operation.duration`: each call the gateway made upstream for one. Unit
`s`, and the buckets the conventions give. They sit beside the Prometheus `/metrics`
(`telemetry/metrics.py`), which keeps its own names; README.md has the mapping.

Aggregated here, not by the SDK's `MeterProvider`: its `Histogram.record` cleans and hashes
the attributes of every measurement, two thirds of what telemetry cost per call. A call adds
to a point found by its attribute tuple (built in one order by `tracing.py`), and a thread of
this module's sends the cumulative points to the SDK's `OTLPMetricExporter` every interval.
Cumulative: an export that fails loses nothing, the next one carries the counts.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExportResult,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

__all__ = ["BUCKETS", "OperationMetrics"]

logger = logging.getLogger(__name__)

# ExplicitBucketBoundaries the conventions give for both (semantic-conventions-genai, docs/gen-ai/mcp.md).
BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
_SCOPE = InstrumentationScope("mcpgw")
_MAX_POINTS = 2000  # attribute sets per histogram; past it a set is not recorded (bounded memory)
_DEFAULT_INTERVAL_MS = 60_000.0  # the SDK's, when neither the config nor OTEL_METRIC_EXPORT_INTERVAL says

Attributes = tuple[tuple[str, str | int], ...]


@dataclass(slots=True)
class _Point:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    count: int = 0
    sum: float = 0.0
    min: float = float("inf")
    max: float = float("-inf")


class _Histogram:
    def __init__(self, name: str, description: str) -> None:
        self.name, self.description = name, description
        self.points: dict[Attributes, _Point] = {}

    def record(self, seconds: float, attributes: Attributes, lock: threading.Lock) -> None:
        with lock:
            point = self.points.get(attributes)
            if point is None:
                if len(self.points) >= _MAX_POINTS:
                    return
                point = self.points[attributes] = _Point()
            point.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
            point.count += 1
            point.sum += seconds
            point.min = min(point.min, seconds)
            point.max = max(point.max, seconds)

    def metric(self, started_ns: int, now_ns: int) -> Metric:
        points = [
            HistogramDataPoint(
                attributes=dict(attributes),
                start_time_unix_nano=started_ns,
                time_unix_nano=now_ns,
                count=point.count,
                sum=point.sum,
                bucket_counts=list(point.counts),
                explicit_bounds=[float(b) for b in BUCKETS],
                min=point.min,
                max=point.max,
            )
            for attributes, point in self.points.items()
        ]
        data = Histogram(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE)
        return Metric(name=self.name, description=self.description, unit="s", data=data)


class OperationMetrics:
    def __init__(self, exporter: OTLPMetricExporter, resource: Resource, interval_ms: float | None) -> None:
        self._exporter = exporter
        self._resource = resource
        self._interval_s = (interval_ms or _DEFAULT_INTERVAL_MS) / 1000
        self._lock = threading.Lock()
        self._started_ns = time.time_ns()
        self._server = _Histogram(
            "mcp.server.operation.duration",
            "MCP request or notification duration as observed on the receiver from the time it was "
            "received until the result or ack is sent.",
        )
        self._client = _Histogram(
            "mcp.client.operation.duration",
            "The duration of the MCP request or notification as observed on the sender from the time "
            "it was sent until the response or ack is received.",
        )
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mcpgw-otlp-metrics", daemon=True)
        self._thread.start()

    def server(self, seconds: float, attributes: Mapping[str, str | int]) -> None:
        self._server.record(seconds, tuple(attributes.items()), self._lock)

    def client(self, seconds: float, attributes: Mapping[str, str | int]) -> None:
        self._client.record(seconds, tuple(attributes.items()), self._lock)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            self.export()

    def export(self) -> bool:
        """Send every point as it stands now (blocking: the metrics thread's, and shutdown's)."""
        now = time.time_ns()
        with self._lock:
            metrics = [h.metric(self._started_ns, now) for h in (self._server, self._client) if h.points]
        if not metrics:
            return True
        scoped = ScopeMetrics(scope=_SCOPE, metrics=metrics, schema_url="")
        data = MetricsData(resource_metrics=[ResourceMetrics(self._resource, [scoped], schema_url="")])
        try:
            return self._exporter.export(data) is MetricExportResult.SUCCESS
        except Exception:
            logger.warning("could not export the operation metrics", exc_info=True)
            return False

    def shutdown(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=1)
        self.export()
        self._exporter.shutdown()
