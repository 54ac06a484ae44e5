"""The two operation histograms of the OpenTelemetry conventions for MCP, on OTLP.

`mcp.server.operation.duration`: each host request, from when the gateway took it to its
answer; `mcp.client.operation.duration`: each call the gateway made upstream for one. Unit
`s`, and the buckets the conventions give. They sit beside the Prometheus `/metrics`
(`telemetry/metrics.py`), which keeps its own names; README.md has the mapping.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.sdk.metrics import MeterProvider

__all__ = ["BUCKETS", "OperationMetrics"]

# ExplicitBucketBoundaries the conventions give for both (semantic-conventions-genai, docs/gen-ai/mcp.md).
BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
_SCOPE = "mcpgw"


class OperationMetrics:
    def __init__(self, meters: MeterProvider) -> None:
        meter = meters.get_meter(_SCOPE)
        self._server = meter.create_histogram(
            "mcp.server.operation.duration",
            unit="s",
            description="MCP request or notification duration as observed on the receiver from the time "
            "it was received until the result or ack is sent.",
            explicit_bucket_boundaries_advisory=BUCKETS,
        )
        self._client = meter.create_histogram(
            "mcp.client.operation.duration",
            unit="s",
            description="The duration of the MCP request or notification as observed on the sender from "
            "the time it was sent until the response or ack is received.",
            explicit_bucket_boundaries_advisory=BUCKETS,
        )

    def server(self, seconds: float, attributes: Mapping[str, str | int]) -> None:
        self._server.record(seconds, attributes)

    def client(self, seconds: float, attributes: Mapping[str, str | int]) -> None:
        self._client.record(seconds, attributes)
