"""`/metrics`: what a Prometheus scrape of a real gateway reads after a known set of calls,
parsed with prometheus-client's own parser, and who may scrape it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry.metrics import MAX_TOOLS_PER_UPSTREAM, GatewayMetrics
from tests.api.conftest import McpClient
from tests.gateway.test_upstream_health import free_url
from tests.harness import RunningGateway, demo_stdio_yaml, serve_gateway, write_config

TIMEOUT = 30.0


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def calls(found: Samples, upstream: str, tool: str, method: str, outcome: str) -> float:
    return value(found, "mcpgw_calls_total", upstream=upstream, tool=tool, method=method, outcome=outcome)


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def keyed_config(tmp_path: Path, extra: str = "") -> Path:
    return write_config(
        tmp_path, f"database: ./gw.db\nauth: {{required: true}}\n{extra}upstreams:{demo_stdio_yaml()}\n"
    )


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    config = keyed_config(tmp_path)
    async with serve_gateway(config) as running:
        yield running


async def key_for(running: RunningGateway) -> str:
    store = running.gateway.store
    org = await store.ensure_organisation("default")
    return (await store.create_api_key(org.id)).secret


async def test_the_counters_equal_the_calls_sent_by_upstream_tool_method_and_outcome(
    gateway: RunningGateway,
) -> None:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        with anyio.fail_after(TIMEOUT):
            client = McpClient(http, gateway.url, await key_for(gateway))
            session = await client.open()
            for i in range(5):
                await client.call(session, "demo__echo", {"text": f"hello {i}"})
            for _ in range(2):
                await client.call(session, "demo__fail", {})
            await client.call(session, "nowhere__tool", {})
            await client.request(session, "resources/read", {"uri": "demo://readme"})
            response = await http.get(f"{gateway.base_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    assert calls(found, "demo", "demo__echo", "tools/call", "ok") == 5
    assert calls(found, "demo", "demo__fail", "tools/call", "tool_error") == 2
    assert calls(found, "none", "nowhere__tool", "tools/call", "denied") == 1
    assert calls(found, "demo", "demo://readme", "resources/read", "ok") == 1
    assert sum(v for (name, _), v in found.items() if name == "mcpgw_calls_total") == 9
    # Both latencies of every call that reached the upstream; the gateway's own time of all.
    tools_call = {"upstream": "demo", "method": "tools/call"}
    assert value(found, "mcpgw_call_gateway_seconds_count", **tools_call) == 7
    assert value(found, "mcpgw_call_upstream_seconds_count", **tools_call) == 7
    assert value(found, "mcpgw_call_gateway_seconds_count", upstream="none", method="tools/call") == 1
    assert value(found, "mcpgw_call_upstream_seconds_count", upstream="none", method="tools/call") == 0
    assert value(found, "mcpgw_call_gateway_seconds_sum", **tools_call) > 0
    # What is held open: this one session; two upstream sessions and stdio children of the demo
    # (per_host): the session's own, and the one the shared catalogue lists through.
    assert value(found, "mcpgw_host_sessions", kind="session") == 1
    assert value(found, "mcpgw_upstream_sessions", upstream="demo") == 2
    assert value(found, "mcpgw_upstream_children", upstream="demo") == 2
    assert value(found, "mcpgw_recorder_queue_depth") == 0
    assert value(found, "mcpgw_recorder_commit_seconds_count") >= 1  # the session, and the calls


async def test_a_scrape_from_beyond_loopback_is_refused_without_a_token(gateway: RunningGateway) -> None:
    """The gateway's own address is loopback; uvicorn takes the client's address from
    X-Forwarded-For when a loopback peer (a reverse proxy on this machine) sends it."""
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        with anyio.fail_after(TIMEOUT):
            beyond = {"x-forwarded-for": "203.0.113.7"}
            response = await http.get(f"{gateway.base_url}/metrics", headers=beyond)
    assert response.status_code == 403
    assert "mcpgw_calls" not in response.text


async def test_with_a_token_only_a_scrape_that_sends_it_is_answered(tmp_path: Path) -> None:
    token = "scrape-token-0123456789"
    config = keyed_config(tmp_path, f"metrics: {{token: {token}}}\n")
    async with serve_gateway(config) as running, httpx2.AsyncClient(timeout=TIMEOUT) as http:
        url = f"{running.base_url}/metrics"
        with anyio.fail_after(TIMEOUT):
            missing = await http.get(url)
            wrong = await http.get(url, headers={"authorization": "Bearer scrape-token-0123456780"})
            beyond = {"authorization": f"Bearer {token}", "x-forwarded-for": "203.0.113.7"}
            right = await http.get(url, headers=beyond)
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert token not in missing.text + wrong.text
    assert "mcpgw_calls" in right.text


async def test_metrics_turned_off_are_not_served(tmp_path: Path) -> None:
    config = keyed_config(tmp_path, "metrics: {enabled: false}\n")
    async with serve_gateway(config) as running, httpx2.AsyncClient(timeout=TIMEOUT) as http:
        with anyio.fail_after(TIMEOUT):
            response = await http.get(f"{running.base_url}/metrics")
    assert response.status_code == 404


def test_tool_names_past_the_cap_of_an_upstream_count_as_other() -> None:
    metrics = GatewayMetrics(["demo"])
    for i in range(MAX_TOOLS_PER_UPSTREAM + 50):
        metrics.call("demo", f"demo__tool{i}", "tools/call", "ok", 0.001, 0.0005)
    metrics.call("demo", "demo__tool0", "tools/call", "made-up outcome", 0.001, None)
    metrics.call("unconfigured", "x", "tools/call", "ok", 0.001, None)
    found = samples(metrics.exposition().decode())
    tools = {dict(labels)["tool"] for (name, labels) in found if name == "mcpgw_calls_total"}
    assert len(tools) == MAX_TOOLS_PER_UPSTREAM + 2  # and "other", and "x" under upstream "none"
    assert calls(found, "demo", "other", "tools/call", "ok") == 50
    assert calls(found, "demo", "demo__tool0", "tools/call", "other") == 1
    assert calls(found, "none", "x", "tools/call", "ok") == 1


def test_two_gateways_in_one_process_count_apart() -> None:
    first, second = GatewayMetrics(["demo"]), GatewayMetrics(["demo"])
    first.call("demo", "demo__echo", "tools/call", "ok", 0.001, 0.0005)
    found = samples(second.exposition().decode())
    assert calls(found, "demo", "demo__echo", "tools/call", "ok") == 0


async def test_each_upstreams_state_is_a_series_an_alert_can_watch(tmp_path: Path) -> None:
    """An upstream where nothing listens is `down` once a listing has tried it; the demo is `up`."""
    unbound, dead_url = free_url()
    extra = f"\n  - {{name: dead, transport: http, url: '{dead_url}', timeouts: {{connect_s: 1}}}}"
    config = write_config(
        tmp_path, f"database: ./gw.db\nauth: {{required: true}}\nupstreams:{demo_stdio_yaml()}{extra}\n"
    )
    with unbound:
        async with serve_gateway(config) as gateway, httpx2.AsyncClient(timeout=TIMEOUT) as http:
            with anyio.fail_after(TIMEOUT):
                before = samples((await http.get(f"{gateway.base_url}/metrics")).text)
                client = McpClient(http, gateway.url, await key_for(gateway))
                await client.call(await client.open(), "dead__anything", {})
                after = samples((await http.get(f"{gateway.base_url}/metrics")).text)
    assert value(before, "mcpgw_upstream_state", upstream="dead", state="unknown") == 1
    assert value(after, "mcpgw_upstream_state", upstream="dead", state="down") == 1
    assert value(after, "mcpgw_upstream_state", upstream="dead", state="up") == 0
    assert value(after, "mcpgw_upstream_state", upstream="demo", state="up") == 1
