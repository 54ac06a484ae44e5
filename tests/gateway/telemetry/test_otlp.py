"""OTLP settings from the config and the environment, and the span encoding the exporter sends."""

from __future__ import annotations

import os

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from gateway.config.values import TelemetryConfig
from gateway.telemetry.otlp import QuickSpanExporter, TelemetryConfigError, otlp_settings


def test_telemetry_is_off_unless_an_endpoint_is_configured() -> None:
    assert otlp_settings(TelemetryConfig(), {}) is None
    assert otlp_settings(TelemetryConfig(traces=False, metrics=False, endpoint="http://c:4318"), {}) is None


def test_the_standard_variables_turn_it_on_and_the_config_wins_over_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318/")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")  # the SDK's resource reads it itself
    env = os.environ
    settings = otlp_settings(TelemetryConfig(), env)
    assert settings is not None
    assert (settings.traces_endpoint, settings.metrics_endpoint) == (
        "http://env:4318/v1/traces",
        "http://env:4318/v1/metrics",
    )
    assert settings.resource.attributes["service.name"] == "from-env"
    assert isinstance(settings.sampler, ParentBased)  # the SDK's default
    mine = otlp_settings(
        TelemetryConfig(endpoint="http://file:4318", service_name="gw", sampler="always_on"), env
    )
    assert mine is not None
    assert mine.traces_endpoint == "http://file:4318/v1/traces"
    assert mine.resource.attributes["service.name"] == "gw"
    assert mine.sampler is ALWAYS_ON


def test_the_service_is_mcpgw_unless_named_and_a_per_signal_endpoint_is_taken_whole() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/custom",
        "OTEL_TRACES_SAMPLER": "traceidratio",
    }
    settings = otlp_settings(TelemetryConfig(metrics=False), env)
    assert settings is not None
    assert (settings.traces_endpoint, settings.metrics_endpoint) == ("http://t:4318/custom", None)
    assert settings.resource.attributes["service.name"] == "mcpgw"
    assert isinstance(settings.sampler, TraceIdRatioBased)


def test_sdk_disabled_turns_it_off_and_grpc_is_refused_by_name() -> None:
    on = TelemetryConfig(endpoint="http://c:4318")
    assert otlp_settings(on, {"OTEL_SDK_DISABLED": "true"}) is None
    with pytest.raises(TelemetryConfigError, match="grpc"):
        otlp_settings(on, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


def test_the_quick_encoding_is_the_sdks_message() -> None:
    resource = Resource.create({"service.name": "mcpgw", "k": "v"})
    scope = InstrumentationScope("mcpgw")
    host = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xB7AD6B7169203331, True, TraceFlags(1))
    server = SpanContext(host.trace_id, 0x1111, False, TraceFlags(1))
    spans = [
        ReadableSpan("tools/call demo__echo", server, host, resource,
                     {"mcp.method.name": "tools/call", "server.port": 8080, "ok": True, "ratio": 0.5},
                     kind=SpanKind.SERVER, status=Status(StatusCode.ERROR, "boom"),
                     start_time=10, end_time=20, instrumentation_scope=scope),
        ReadableSpan("tools/call echo", SpanContext(host.trace_id, 0x2222, False, TraceFlags(1)), server,
                     resource, {"network.transport": "pipe"}, kind=SpanKind.CLIENT,
                     start_time=12, end_time=18, instrumentation_scope=scope),
        ReadableSpan("tools/list", SpanContext(7, 8, False, TraceFlags(1)), None, resource, {},
                     kind=SpanKind.SERVER, start_time=1, end_time=2, instrumentation_scope=scope),
    ]  # fmt: skip
    exporter = QuickSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    quick = ExportTraceServiceRequest.FromString(exporter.encode(spans))
    quick_again = ExportTraceServiceRequest.FromString(exporter.encode(spans))  # from the cache
    assert in_order(quick) == in_order(encode_spans(spans)) == in_order(quick_again)


def in_order(request: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    """`request` with each span's attributes by key: the order OTLP gives no meaning to."""
    ordered = ExportTraceServiceRequest()
    ordered.CopyFrom(request)
    for resource_spans in ordered.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                pairs = sorted(span.attributes, key=lambda pair: pair.key)
                copies = [type(pair)() for pair in pairs]
                for copy, pair in zip(copies, pairs, strict=True):
                    copy.CopyFrom(pair)
                del span.attributes[:]
                span.attributes.extend(copies)
    return ordered


def test_the_encoding_keeps_caching_what_repeats_after_many_calls() -> None:
    """Each call's request id, port and session are new: were they kept, the cache would be full
    of them within a few thousand calls, and every span after would pay the full encoding (twice
    the CPU). A value that repeats, seen after them, must still be kept encoded."""
    resource = Resource.create({"service.name": "mcpgw"})
    scope = InstrumentationScope("mcpgw")
    exporter = QuickSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")

    def call_span(number: int, tool: str) -> ReadableSpan:
        attributes: dict[str, str | int] = {"mcp.method.name": "tools/call", "gen_ai.tool.name": tool,
                      "jsonrpc.request.id": str(number), "client.port": 40000 + number % 20000,
                      "mcp.session.id": f"session-{number}"}  # fmt: skip
        context = SpanContext(number + 1, number + 1, False, TraceFlags(1))
        return ReadableSpan("tools/call", context, None, resource, attributes, kind=SpanKind.SERVER,
                            start_time=1, end_time=2, instrumentation_scope=scope)  # fmt: skip

    for start in range(0, 10_000, 500):
        exporter.encode([call_span(n, "demo__echo") for n in range(start, start + 500)])
    late = [call_span(10_000 + n, "demo__late") for n in range(10)]
    assert in_order(ExportTraceServiceRequest.FromString(exporter.encode(late))) == in_order(
        encode_spans(late)
    )
    assert exporter._pair("gen_ai.tool.name", "demo__late") is exporter._pair(
        "gen_ai.tool.name", "demo__late"
    )
    assert exporter._pair("gen_ai.tool.name", "demo__echo") is exporter._pair(
        "gen_ai.tool.name", "demo__echo"
    )
