"""The spans of requests other than tools/call: a resource's URI as the conventions name it
(`mcp.resource.uri`, never its query, where a token could travel), and no `mcp.session.id` on any
span of a 2026-07-28 host, whatever it asked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.gateway.telemetry.otlp_receiver import attributes_of, otlp_receiver
from tests.gateway.telemetry.test_tracing import (
    MODERN,
    TIMEOUT,
    Host,
    gateway_with,
    quick_batches,
    telemetry_yaml,
)

__all__ = ["quick_batches"]  # the autouse fixture, in force here too

QUERY_SECRET = "PLANTED-URI-TOKEN-5e0b9d"


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as client:
        yield client


@pytest.mark.parametrize("generation", ["2025-11-25", MODERN])
@pytest.mark.parametrize("upstream", ["stdio", "http"])
async def test_a_resource_read_names_its_uri_without_the_query(
    tmp_path: Path, http: httpx2.AsyncClient, generation: str, upstream: str
) -> None:
    async with (
        otlp_receiver() as receiver,
        gateway_with(tmp_path, upstream, telemetry_yaml(receiver.url)) as (running, _),
    ):
        host = Host(http, running.url, generation)
        await host.open()
        listed = await host.request("resources/list", {})
        assert "demo://readme" in [r["uri"] for r in listed["result"]["resources"]]
        read = await host.request("resources/read", {"uri": "demo://readme"})
        assert read["result"]["contents"][0]["text"]
        # A URI whose query carries a token: whatever the upstream answers, the token stays out.
        unknown = f"demo://greeting/ann?token={QUERY_SECRET}#part"
        await host.request("resources/read", {"uri": unknown}, statuses=(200, 400))
        await host.request("tools/list", {})

        def reads() -> list[Span] | None:
            found = [s for s in receiver.spans if s.name == "resources/read"]
            servers = [s for s in found if s.kind == Span.SPAN_KIND_SERVER]
            clients = [s for s in found if s.kind == Span.SPAN_KIND_CLIENT]
            listed = [s for s in receiver.spans if s.name == "tools/list"]
            return found if len(servers) >= 2 and len(clients) >= 1 and listed else None

        found = await receiver.wait_for(reads)
        spans = list(receiver.spans)
        exported = bytes(receiver.received)

    servers = [s for s in found if s.kind == Span.SPAN_KIND_SERVER]
    uris = sorted(attributes_of(s)["mcp.resource.uri"] for s in servers)
    assert uris == ["demo://greeting/ann", "demo://readme"]
    for server in servers:
        assert attributes_of(server)["mcp.method.name"] == "resources/read"
    readme = next(s for s in servers if attributes_of(s)["mcp.resource.uri"] == "demo://readme")
    (client,) = [s for s in spans if s.kind == Span.SPAN_KIND_CLIENT and s.parent_span_id == readme.span_id]
    assert attributes_of(client)["mcp.resource.uri"] == "demo://readme"
    assert QUERY_SECRET.encode() not in exported
    for span in spans:
        attrs = attributes_of(span)
        assert attrs["mcp.protocol.version"] in (generation, "2025-11-25", "2025-06-18", MODERN), attrs
        if generation == MODERN:  # a 2026-07-28 host has no session, on no span at all
            assert "mcp.session.id" not in attrs, span.name
        elif span.kind == Span.SPAN_KIND_SERVER:
            assert attrs["mcp.session.id"] == host.session_id, span.name
