"""A real OTLP/HTTP receiver for the tests: a starlette app under uvicorn on 127.0.0.1 that
decodes what the gateway exports with `opentelemetry-proto`, keeps every byte it was sent,
and can be told to hang or to refuse (HTTP 503) instead of accepting."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.harness import serve_asgi

WAIT = 20.0


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def attributes_of(span: Span | Any) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in span.attributes}


@dataclass
class Receiver:
    mode: str = "accept"  # accept | hang | refuse
    url: str = ""
    spans: list[Span] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)
    received: bytearray = field(default_factory=bytearray)  # every body, every header
    requests: int = 0
    changed: anyio.Event = field(default_factory=anyio.Event)
    released: anyio.Event = field(default_factory=anyio.Event)  # ends a hang

    def _changed(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(self, found: Any) -> Any:
        """Wait until `found()` returns something truthy; return it."""
        with anyio.fail_after(WAIT):
            while not (result := found()):
                await self.changed.wait()
            return result

    def spans_of(self, trace_id: str) -> list[Span]:
        return [span for span in self.spans if span.trace_id.hex() == trace_id]

    async def _traces(self, request: Request) -> Response:
        return await self._take(request, "traces")

    async def _metrics(self, request: Request) -> Response:
        return await self._take(request, "metrics")

    async def _take(self, request: Request, signal: str) -> Response:
        body = await request.body()
        self.received += b"".join(k.encode() + b": " + v.encode() + b"\n" for k, v in request.headers.items())
        self.received += body
        self.requests += 1
        self._changed()
        if self.mode == "hang":
            await self.released.wait()
            return Response(status_code=503)
        if self.mode == "refuse":
            return Response(status_code=503)
        if signal == "traces":
            traces = ExportTraceServiceRequest.FromString(body)
            for resource_spans in traces.resource_spans:
                self.resources.append(attributes_of(resource_spans.resource))
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
        else:
            exported = ExportMetricsServiceRequest.FromString(body)
            for resource_metrics in exported.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    self.metrics.extend(scope_metrics.metrics)
        self._changed()
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf")


@asynccontextmanager
async def otlp_receiver(mode: str = "accept") -> AsyncIterator[Receiver]:
    receiver = Receiver(mode)
    app = Starlette(
        routes=[
            Route("/v1/traces", receiver._traces, methods=["POST"]),
            Route("/v1/metrics", receiver._metrics, methods=["POST"]),
        ]
    )
    async with serve_asgi(app) as url:
        receiver.url = url
        try:
            yield receiver
        finally:
            receiver.released.set()
