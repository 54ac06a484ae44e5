"""What leaves the gateway for the collector, and what does not: spans that cannot be sent are
counted (and not logged one by one), the standard variables configure a running gateway, the
host's sampling decision is kept, and captured content is capped."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from gateway.config.values import TelemetryConfig
from gateway.telemetry.otlp import OtlpExport, otlp_settings
from tests.gateway.telemetry.otlp_receiver import attributes_of, otlp_receiver
from tests.gateway.telemetry.test_tracing import (
    HOST_SPAN,
    MODERN,
    TIMEOUT,
    Host,
    gateway_with,
    quick_batches,
    recorded_traces,
    telemetry_yaml,
)

__all__ = ["quick_batches"]  # the autouse fixture, in force here too

QUEUE = 2048  # the span queue's size (the SDK's default)


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as client:
        yield client


RESOURCE = Resource({"service.name": "mcpgw"})


def span(number: int) -> ReadableSpan:
    context = SpanContext(number + 1, number + 1, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return ReadableSpan(
        "tools/list", context, None, RESOURCE, kind=SpanKind.SERVER, start_time=1, end_time=2,
        instrumentation_scope=InstrumentationScope("mcpgw"),
    )  # fmt: skip


async def test_spans_a_hung_collector_leaves_no_room_for_are_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with otlp_receiver("hang") as receiver:
        settings = otlp_settings(TelemetryConfig(endpoint=receiver.url, metrics=False, timeout_s=2), {})
        assert settings is not None
        export = OtlpExport(settings)
        try:
            export.queue(span(0))
            await receiver.wait_for(lambda: receiver.requests)  # the one export is hanging now
            more = QUEUE + 1000
            spans = [span(number) for number in range(1, more + 1)]
            with caplog.at_level(logging.WARNING):
                for queued in spans:  # well within the hung export's 2 s
                    export.queue(queued)
            # The queue holds QUEUE spans; the rest were dropped, and counted as they were.
            assert export.dropped() >= more - QUEUE
            full = [r for r in caplog.records if "queue" in r.getMessage().lower()]
            assert len(full) <= 1, f"{len(full)} lines about a full queue"
            receiver.mode = "accept"
            receiver.released.set()
            # The hung batch fails (counted too); what was queued reaches the collector once it answers.
            await receiver.wait_for(lambda: len(receiver.spans) + export.dropped() >= more + 1)
            assert len(receiver.spans) + export.dropped() == more + 1
            assert len(receiver.spans) >= QUEUE - 512  # what the queue held got through
        finally:
            export.shutdown()


async def test_the_standard_variables_configure_a_running_gateway(
    tmp_path: Path, http: httpx2.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with otlp_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-team=team-7")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-gateway")
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging")
        monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")
        async with gateway_with(tmp_path, "stdio", "") as (running, _):
            host = Host(http, running.url, MODERN)
            await host.call("demo__echo", {"text": "hi"})
            await receiver.wait_for(lambda: any(s.name == "tools/call demo__echo" for s in receiver.spans))
            await receiver.wait_for(lambda: receiver.metrics)
    assert b"x-collector-team: team-7" in bytes(receiver.received)
    assert receiver.resources[0]["service.name"] == "edge-gateway"
    assert receiver.resources[0]["deployment.environment"] == "staging"


async def test_always_off_exports_no_span_but_the_histograms(
    tmp_path: Path, http: httpx2.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    async with (
        otlp_receiver() as receiver,
        gateway_with(tmp_path, "stdio", telemetry_yaml(receiver.url)) as (running, _),
    ):
        host = Host(http, running.url, "2025-11-25")
        await host.open()
        await host.call("demo__echo", {"text": "hi"})
        await receiver.wait_for(
            lambda: any(m.name == "mcp.client.operation.duration" for m in receiver.metrics)
        )
    assert receiver.spans == []


async def test_a_host_trace_it_did_not_sample_is_not_exported_but_still_recorded(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    unsampled, sampled = "11111111111111111111111111111111", "22222222222222222222222222222222"
    async with (
        otlp_receiver() as receiver,
        gateway_with(tmp_path, "stdio", telemetry_yaml(receiver.url)) as (running, _),
    ):
        host = Host(http, running.url, "2025-11-25")
        await host.open()
        await host.call("demo__echo", {"text": "a"}, meta={"traceparent": f"00-{unsampled}-{HOST_SPAN}-00"})
        await host.call("demo__echo", {"text": "b"}, meta={"traceparent": f"00-{sampled}-{HOST_SPAN}-01"})
        # Spans leave in the order they end: once the second call's are in, the first's would be.
        await receiver.wait_for(lambda: len(receiver.spans_of(sampled)) >= 2)
        assert recorded_traces(running) == [unsampled, sampled]
    assert receiver.spans_of(unsampled) == []


async def test_captured_content_is_capped(tmp_path: Path, http: httpx2.AsyncClient) -> None:
    extra = "  capture_content: true\n  max_content_bytes: 64\n"
    async with (
        otlp_receiver() as receiver,
        gateway_with(tmp_path, "stdio", telemetry_yaml(receiver.url, extra)) as (running, _),
    ):
        host = Host(http, running.url, "2025-11-25")
        await host.open()
        long = "x" * 5000
        await host.call("demo__echo", {"text": long})
        (server,) = await receiver.wait_for(
            lambda: [s for s in receiver.spans if s.name == "tools/call demo__echo"]
        )
    attrs = attributes_of(server)
    assert server.kind == Span.SPAN_KIND_SERVER
    for key in ("gen_ai.tool.call.arguments", "gen_ai.tool.call.result"):
        assert attrs[key].startswith(("{", "[")), attrs[key]
        assert len(attrs[key].encode()) < 200, (key, len(attrs[key]))
    assert long.encode() not in bytes(receiver.received)
