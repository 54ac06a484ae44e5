"""Traces and metrics over OTLP: a real gateway exporting to a real OTLP/HTTP receiver in this
process (tests/gateway/telemetry/otlp_receiver.py), with real upstreams (the demo over stdio
and over Streamable HTTP), in both protocol generations."""

from __future__ import annotations

import sqlite3
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.shared.inbound import NAME_BEARING_METHODS, encode_header_value
from mcp_types import CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, PROTOCOL_VERSION_META_KEY
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.telemetry.otel_metrics import BUCKETS
from tests.gateway.core.test_tasks import Host as TasksHost
from tests.gateway.telemetry.otlp_receiver import attributes_of, otlp_receiver
from tests.gateway.telemetry.test_metrics import samples, value
from tests.gateway.test_upstream_health import free_url
from tests.harness import (
    RunningGateway,
    demo_stdio_yaml,
    keyless_config,
    serve_gateway,
    start_conformance_upstream,
    start_demo_http,
    stop_process,
    write_config,
)

TIMEOUT = 30.0
MODERN = "2026-07-28"
HOST_SPAN = "b7ad6b7169203331"
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
# Planted where a careless exporter would pick them up: the host's key and headers, the
# arguments and results of a call, an upstream's static header.
KEY_SECRET_HEADER = "PLANTED-HOST-HEADER-8a1f3c"
UPSTREAM_SECRET = "PLANTED-UPSTREAM-HEADER-77c2e1"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwbGFudGVkIn0.cGxhbnRlZC1zaWduYXR1cmU"
ARG_PASSWORD = "PLANTED-PASSWORD-19d0aa"


@pytest.fixture(autouse=True)
def quick_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK's own variable: the span batch leaves within 100 ms instead of 5 s.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)


def telemetry_yaml(endpoint: str, extra: str = "") -> str:
    return f"telemetry:\n  endpoint: {endpoint}\n  metrics_interval_s: 0.2\n  timeout_s: 1\n{extra}"


@asynccontextmanager
async def gateway_with(
    tmp_path: Path, upstream: str, telemetry: str, key_required: bool = False
) -> AsyncIterator[tuple[RunningGateway, str | None]]:
    """A gateway with the demo upstream over `upstream` (stdio | http); its API key if asked."""
    proc = None
    if upstream == "http":
        proc, url = await start_demo_http()
        upstreams = f"""
  - name: demo
    transport: http
    url: {url}
    headers: {{X-Upstream-Token: {UPSTREAM_SECRET}}}
"""
    else:
        upstreams = demo_stdio_yaml()
    auth = "true" if key_required else "false"
    config = write_config(
        tmp_path, f"database: ./gw.db\nauth: {{required: {auth}}}\n{telemetry}upstreams:{upstreams}\n"
    )
    try:
        async with serve_gateway(config) as running:
            key = None
            if key_required:
                org = await running.gateway.store.ensure_organisation("default")
                key = (await running.gateway.store.create_api_key(org.id)).secret
            yield running, key
    finally:
        if proc is not None:
            await stop_process(proc)


class Host:
    """A host of either generation, over raw Streamable HTTP (JSON responses)."""

    def __init__(self, http: httpx2.AsyncClient, url: str, generation: str, key: str | None = None) -> None:
        self.http, self.url, self.generation = http, url, generation
        self.headers = {**ACCEPT, **({"x-api-key": key} if key else {})}
        self.session_id: str | None = None
        self._ids = iter(range(1, 10**6))

    async def open(self) -> None:
        if self.generation == MODERN:
            return
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": self.generation, "capabilities": {},
                           "clientInfo": {"name": "traced-host", "version": "1"}}}  # fmt: skip
        with anyio.fail_after(TIMEOUT):
            response = await self.http.post(self.url, json=init, headers=self.headers)
            assert response.status_code == 200, response.text
            self.session_id = response.headers["mcp-session-id"]
            done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            await self.http.post(self.url, json=done, headers=self._headers(done))

    def _headers(self, message: dict[str, Any], extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {**self.headers, **(extra or {})}
        if self.session_id is not None:
            headers["mcp-session-id"] = self.session_id
        if self.generation == MODERN and "method" in message:
            headers |= {"mcp-protocol-version": MODERN, "mcp-method": message["method"]}
            name_key = NAME_BEARING_METHODS.get(message["method"])
            if name_key is not None:
                headers["mcp-name"] = encode_header_value(message["params"][name_key])
        return headers

    async def call(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        meta: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        params = {"name": tool, "arguments": arguments}
        return await self.request("tools/call", params, meta=meta, headers=headers)

    async def request(
        self,
        method: str,
        params: dict[str, Any],
        *,
        meta: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        statuses: tuple[int, ...] = (200,),  # a 2026-07-28 error is an HTTP 400
    ) -> dict[str, Any]:
        meta = dict(meta or {})
        if self.generation == MODERN:
            meta |= {PROTOCOL_VERSION_META_KEY: MODERN, CLIENT_CAPABILITIES_META_KEY: {},
                     CLIENT_INFO_META_KEY: {"name": "traced-host", "version": "1"}}  # fmt: skip
        params = {**params, **({"_meta": meta} if meta else {})}
        message = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        with anyio.fail_after(TIMEOUT):
            response = await self.http.post(self.url, json=message, headers=self._headers(message, headers))
        assert response.status_code in statuses, response.text
        body: dict[str, Any] = response.json()
        return body


def recorded_traces(running: RunningGateway) -> list[str]:
    with sqlite3.connect(running.gateway.config.database) as db:
        return [row[0] for row in db.execute("SELECT trace_id FROM invocations ORDER BY created_at")]


def one(spans: list[Span], kind: int) -> Span:
    found = [span for span in spans if span.kind == kind]
    assert len(found) == 1, spans
    return found[0]


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as client:
        yield client


@pytest.mark.parametrize("generation", ["2025-11-25", MODERN])
@pytest.mark.parametrize("upstream", ["stdio", "http"])
@pytest.mark.parametrize("carrier", ["meta", "header"])
async def test_a_traced_tool_call_is_a_server_span_and_a_client_span_in_the_hosts_trace(
    tmp_path: Path, http: httpx2.AsyncClient, generation: str, upstream: str, carrier: str
) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace}-{HOST_SPAN}-01"
    async with (
        otlp_receiver() as receiver,
        gateway_with(tmp_path, upstream, telemetry_yaml(receiver.url)) as (
            running,
            _,
        ),
    ):
        host = Host(http, running.url, generation)
        await host.open()
        if carrier == "meta":
            answer = await host.call("demo__traceparent", {}, meta={"traceparent": traceparent})
        else:
            answer = await host.call("demo__traceparent", {}, headers={"traceparent": traceparent})
        sent_upstream = answer["result"]["content"][0]["text"]
        spans = await receiver.wait_for(
            lambda: len(receiver.spans_of(trace)) >= 2 and receiver.spans_of(trace)
        )
        assert recorded_traces(running) == [trace]  # the record holds the trace the spans are in

    server, client = one(spans, Span.SPAN_KIND_SERVER), one(spans, Span.SPAN_KIND_CLIENT)
    assert server.name == "tools/call demo__traceparent"
    assert server.parent_span_id.hex() == HOST_SPAN
    assert client.parent_span_id == server.span_id
    # The upstream got the client span's context: its spans continue the trace under it.
    assert sent_upstream == f"00-{trace}-{client.span_id.hex()}-01"
    attrs = attributes_of(server)
    assert attrs["mcp.method.name"] == "tools/call"
    assert attrs["mcp.protocol.version"] == generation
    assert attrs["gen_ai.operation.name"] == "execute_tool"
    assert attrs["gen_ai.tool.name"] == "demo__traceparent"
    assert attrs["jsonrpc.request.id"] == "1"
    assert attrs["network.transport"] == "tcp"
    assert attrs["client.address"] == "127.0.0.1"
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == int(running.base_url.rsplit(":", 1)[1])
    assert "error.type" not in attrs
    if generation == MODERN:
        assert "mcp.session.id" not in attrs
    else:
        assert attrs["mcp.session.id"] == host.session_id
    upstream_attrs = attributes_of(client)
    assert client.name == "tools/call traceparent"
    assert upstream_attrs["gen_ai.tool.name"] == "traceparent"  # the upstream's own name
    assert upstream_attrs["mcp.method.name"] == "tools/call"
    if upstream == "http":
        assert upstream_attrs["network.transport"] == "tcp"
        assert upstream_attrs["server.address"] == "127.0.0.1"
        assert isinstance(upstream_attrs["server.port"], int)
    else:
        assert upstream_attrs["network.transport"] == "pipe"
        assert "server.address" not in upstream_attrs
    # The client span lies inside the server span and lasts what the upstream took.
    assert server.start_time_unix_nano <= client.start_time_unix_nano
    assert client.end_time_unix_nano <= server.end_time_unix_nano + 1_000_000
    assert receiver.resources[0]["service.name"] == "mcpgw"


async def test_a_failed_call_has_error_type_and_an_error_status(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    async with (
        otlp_receiver() as receiver,
        gateway_with(tmp_path, "stdio", telemetry_yaml(receiver.url)) as (
            running,
            _,
        ),
    ):
        host = Host(http, running.url, "2025-11-25")
        await host.open()
        await host.call("demo__fail", {"message": "boom"})
        await host.call("demo__no_such_tool", {})
        spans = await receiver.wait_for(
            lambda: (
                len([s for s in receiver.spans if s.kind == Span.SPAN_KIND_SERVER]) >= 2 and receiver.spans
            )
        )
    by_name = {span.name: span for span in spans if span.kind == Span.SPAN_KIND_SERVER}
    failed = by_name["tools/call demo__fail"]
    assert attributes_of(failed)["error.type"] == "tool_error"
    assert failed.status.code == failed.status.STATUS_CODE_ERROR
    unknown = by_name["tools/call demo__no_such_tool"]
    assert attributes_of(unknown)["error.type"] == "-32602"
    assert attributes_of(unknown)["rpc.response.status_code"] == "-32602"
    # No upstream was called for it: no client span.
    assert [s for s in spans if s.trace_id == unknown.trace_id and s.kind == Span.SPAN_KIND_CLIENT] == []


async def test_operation_durations_are_histograms_by_the_conventions(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    async with (
        otlp_receiver() as receiver,
        gateway_with(tmp_path, "http", telemetry_yaml(receiver.url)) as (
            running,
            _,
        ),
    ):
        host = Host(http, running.url, MODERN)
        await host.call("demo__echo", {"text": "hi"})

        def both() -> dict[str, Any] | None:
            names = {metric.name: metric for metric in receiver.metrics}
            wanted = ("mcp.server.operation.duration", "mcp.client.operation.duration")
            return names if all(name in names for name in wanted) else None

        metrics = await receiver.wait_for(both)
    for name in ("mcp.server.operation.duration", "mcp.client.operation.duration"):
        metric = metrics[name]
        assert metric.unit == "s"
        point = metric.histogram.data_points[0]
        assert list(point.explicit_bounds) == [float(b) for b in BUCKETS]
        assert point.count >= 1
        assert attributes_of(point)["mcp.method.name"] == "tools/call"
    client_point = metrics["mcp.client.operation.duration"].histogram.data_points[0]
    assert attributes_of(client_point)["gen_ai.tool.name"] == "echo"
    assert attributes_of(client_point)["server.address"] == "127.0.0.1"


async def median_ms(host: Host, calls: int) -> list[float]:
    took = []
    for _ in range(calls):
        began = time.perf_counter()
        await host.call("demo__echo", {"text": "x"})
        took.append((time.perf_counter() - began) * 1000)
    return took


@pytest.mark.parametrize("mode", ["hang", "refuse", "absent"])
async def test_a_collector_that_hangs_or_refuses_slows_no_call_and_loses_no_record(
    tmp_path: Path, http: httpx2.AsyncClient, mode: str
) -> None:
    async with otlp_receiver("hang" if mode == "absent" else mode) as receiver:
        sock = None
        endpoint = receiver.url
        if mode == "absent":
            sock, url = free_url()  # nothing listens there: connections are refused
            endpoint = url.removesuffix("/mcp")
        (tmp_path / "off").mkdir()
        (tmp_path / "on").mkdir()
        try:
            async with (
                gateway_with(tmp_path / "on", "stdio", telemetry_yaml(endpoint)) as (traced, _),
                gateway_with(tmp_path / "off", "stdio", "") as (plain, _),
            ):
                on, off = Host(http, traced.url, "2025-11-25"), Host(http, plain.url, "2025-11-25")
                await on.open()
                await off.open()
                await median_ms(on, 5)  # warm both: the stdio child, the first export under way
                await median_ms(off, 5)
                if mode != "absent":
                    await receiver.wait_for(lambda: receiver.requests)  # an export is hanging or refused
                traced_ms, plain_ms = [], []
                for _ in range(8):  # interleaved, so the machine's noise falls on both
                    traced_ms += await median_ms(on, 5)
                    plain_ms += await median_ms(off, 5)
                rows = len(recorded_traces(traced))
                if mode != "hang":

                    async def dropped() -> float:
                        text = (await http.get(f"{traced.base_url}/metrics")).text
                        return value(samples(text), "mcpgw_telemetry_dropped_total")

                    with anyio.fail_after(TIMEOUT):
                        # The export thread gives up within its 1 s timeout; the count it keeps
                        # has no event to wait on, so the test reads /metrics as an operator would.
                        while await dropped() == 0:  # noqa: ASYNC110
                            await anyio.sleep(0.05)
                receiver.released.set()
        finally:
            if sock is not None:
                sock.close()
    assert rows == 5 + 40
    # The exporter's timeout is 1 s: a call that waited on it would take that long.
    assert max(traced_ms) < 500
    assert statistics.median(traced_ms) <= statistics.median(plain_ms) * 1.5 + 2.0


@pytest.mark.parametrize("capture", [False, True])
@pytest.mark.parametrize("generation", ["2025-11-25", MODERN])
async def test_nothing_secret_reaches_the_collector(
    tmp_path: Path, http: httpx2.AsyncClient, capture: bool, generation: str
) -> None:
    extra = "  capture_content: true\n" if capture else ""
    telemetry = telemetry_yaml("RECEIVER", extra)
    async with otlp_receiver() as receiver:
        telemetry = telemetry.replace("RECEIVER", receiver.url)
        async with gateway_with(tmp_path, "http", telemetry, key_required=True) as (running, key):
            assert key is not None
            host = Host(http, running.url, generation, key)
            await host.open()
            text = f"visible-marker Bearer {JWT} {key}"
            headers = {"x-planted": KEY_SECRET_HEADER, "authorization": f"Bearer {key}"}
            answer = await host.call("demo__echo", {"text": text, "password": ARG_PASSWORD}, headers=headers)
            assert JWT in str(answer)  # the host got it back: only telemetry must not
            # The call's server and client spans (initialize and notifications have spans too).
            await receiver.wait_for(
                lambda: len([s for s in receiver.spans if s.name.startswith("tools/call")]) >= 2
            )
            exported = bytes(receiver.received)
    for secret in (key, JWT, ARG_PASSWORD, KEY_SECRET_HEADER, UPSTREAM_SECRET):
        assert secret.encode() not in exported, secret
    assert (b"visible-marker" in exported) is capture  # content is there only when asked for


async def test_initialize_and_the_hosts_notifications_are_server_spans_of_their_session(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    trace = "0af7651916cd43dd8448eb211c80319c"
    traceparent = f"00-{trace}-{HOST_SPAN}-01"
    async with (
        otlp_receiver() as receiver,
        gateway_with(tmp_path, "stdio", telemetry_yaml(receiver.url)) as (running, _),
    ):
        host = Host(http, running.url, "2025-06-18")
        # The host's trace travels in the initialize request's header, the notifications' _meta.
        host.headers["traceparent"] = traceparent
        await host.open()
        del host.headers["traceparent"]
        cancelled = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                     "params": {"requestId": 99, "reason": "changed my mind",
                                "_meta": {"traceparent": traceparent}}}  # fmt: skip
        with anyio.fail_after(TIMEOUT):
            answered = await http.post(running.url, json=cancelled, headers=host._headers(cancelled))
        assert answered.status_code == 202
        spans = await receiver.wait_for(
            lambda: len(receiver.spans_of(trace)) >= 3 and receiver.spans_of(trace)
        )

    by_name = {span.name: span for span in spans}
    assert set(by_name) == {"initialize", "notifications/initialized", "notifications/cancelled"}
    for span in spans:
        assert span.kind == Span.SPAN_KIND_SERVER
        assert span.parent_span_id.hex() == HOST_SPAN
        attrs = attributes_of(span)
        assert attrs["mcp.method.name"] == span.name
        assert attrs["mcp.session.id"] == host.session_id
        assert attrs["mcp.protocol.version"] == "2025-06-18"
        assert attrs["network.transport"] == "tcp"
        assert attrs["client.address"] == "127.0.0.1"
        assert "error.type" not in attrs
        # A notification has no id (the cancellation names another request's): only initialize does.
        assert ("jsonrpc.request.id" in attrs) is (span.name == "initialize")
    assert attributes_of(by_name["initialize"])["jsonrpc.request.id"] == "0"
    assert b"changed my mind" not in bytes(receiver.received)


async def test_a_refused_initialize_is_an_error_span(tmp_path: Path, http: httpx2.AsyncClient) -> None:
    limits = "sessions: {max_per_key: 1}\n"
    async with (
        otlp_receiver() as receiver,
        gateway_with(tmp_path, "stdio", telemetry_yaml(receiver.url, "") + limits) as (running, _),
    ):
        await Host(http, running.url, "2025-11-25").open()
        init = {"jsonrpc": "2.0", "id": 7, "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                           "clientInfo": {"name": "second", "version": "1"}}}  # fmt: skip
        with anyio.fail_after(TIMEOUT):
            refused = await http.post(running.url, json=init, headers=ACCEPT)
        assert refused.status_code == 429, refused.text

        def failed() -> list[Span]:
            return [
                s for s in receiver.spans if s.name == "initialize" and attributes_of(s).get("error.type")
            ]

        spans = await receiver.wait_for(failed)
    attrs = attributes_of(spans[0])
    assert attrs["error.type"] == str(refused.json()["error"]["code"])
    assert "mcp.session.id" not in attrs
    assert spans[0].status.code == spans[0].status.STATUS_CODE_ERROR


async def test_the_client_span_carries_the_upstream_sessions_version_and_starts_with_its_call(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    async with (
        otlp_receiver() as receiver,
        gateway_with(tmp_path, "http", telemetry_yaml(receiver.url)) as (running, _),
    ):
        host = Host(http, running.url, "2025-06-18")
        await host.open()
        await host.call("demo__wait", {"seconds": 0.3})
        spans = await receiver.wait_for(
            lambda: (
                len([s for s in receiver.spans if s.kind == Span.SPAN_KIND_CLIENT]) >= 1 and receiver.spans
            )
        )
    server = next(s for s in spans if s.name == "tools/call demo__wait")
    client = one([s for s in spans if s.trace_id == server.trace_id], Span.SPAN_KIND_CLIENT)
    assert attributes_of(client)["mcp.protocol.version"] == "2025-06-18"  # what demo negotiated
    waited = client.end_time_unix_nano - client.start_time_unix_nano
    assert 300_000_000 <= waited <= server.end_time_unix_nano - server.start_time_unix_nano
    assert server.start_time_unix_nano <= client.start_time_unix_nano
    assert client.end_time_unix_nano <= server.end_time_unix_nano


async def test_a_task_that_outlives_its_call_is_a_span_of_its_own_linked_to_the_poll_that_saw_it_end(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    proc, url = await start_conformance_upstream()
    try:
        async with otlp_receiver() as receiver:
            telemetry = telemetry_yaml(receiver.url)
            config = keyless_config(
                tmp_path, f"\n  - {{name: work, transport: http, url: '{url}'}}", telemetry
            )
            async with serve_gateway(config) as running:
                tasks_host = TasksHost(http, running.url)
                created = await tasks_host.call(
                    "tools/call", {"name": "work__slow_compute", "arguments": {"seconds": 0.2}}
                )
                assert created["resultType"] == "task"
                await tasks_host.until(created["taskId"], "completed")

                def task_span() -> list[Span]:
                    return [s for s in receiver.spans if s.kind == Span.SPAN_KIND_INTERNAL]

                found = await receiver.wait_for(task_span)
                spans = list(receiver.spans)
    finally:
        await stop_process(proc)
    task = found[0]
    call = next(s for s in spans if s.span_id == task.parent_span_id)
    assert call.name == "tools/call work__slow_compute"
    assert call.kind == Span.SPAN_KIND_SERVER
    assert task.name == "task tools/call work__slow_compute"
    assert task.trace_id == call.trace_id
    attrs = attributes_of(task)
    assert attrs["gen_ai.tool.name"] == "work__slow_compute"
    assert attrs["mcpgw.task.outcome"] == "ok"
    assert "error.type" not in attrs
    # It ends with the tasks/get that saw the task done, and links to that request's span.
    (link,) = task.links
    poll = next(s for s in spans if s.span_id == link.span_id)
    assert poll.name == "tasks/get"
    assert task.start_time_unix_nano == call.start_time_unix_nano
    assert task.end_time_unix_nano - task.start_time_unix_nano >= 200_000_000
    assert task.end_time_unix_nano <= poll.end_time_unix_nano
