"""Shared fixtures: a demo upstream over HTTP and a gateway in front of it (and of more)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.harness import (
    RunningGateway,
    demo_stdio_yaml,
    serve_gateway,
    start_demo_http,
    stop_process,
    write_config,
)


@pytest.fixture(scope="session")
async def demo_http_url() -> AsyncIterator[str]:
    proc, url = await start_demo_http()
    yield url
    await stop_process(proc)


@pytest.fixture(scope="session")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    """Key-less gateway with the demo over stdio (`demo__`) and a third-party server (`time__`)."""
    config = write_config(
        tmp_path_factory.mktemp("gateway"),
        f"""
database: ./gw.db
auth: {{required: false}}
upstreams:{demo_stdio_yaml()}
  - name: time
    transport: stdio
    command: [python, -m, mcp_server_time, --local-timezone, UTC]
""",
    )
    async with serve_gateway(config) as running:
        yield running


@pytest.fixture(scope="session")
async def web_gateway(
    demo_http_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    """Key-less gateway with the demo over Streamable HTTP (`web__`)."""
    config = write_config(
        tmp_path_factory.mktemp("web-gateway"),
        f"""
database: ./gw.db
auth: {{required: false}}
upstreams:
  - name: web
    transport: http
    url: {demo_http_url}
    timeouts: {{call_s: 5}}
""",
    )
    async with serve_gateway(config) as running:
        yield running


@pytest.fixture(scope="session")
async def demo_sse_url() -> AsyncIterator[str]:
    proc, url = await start_demo_http("--sse")
    yield url
    await stop_process(proc)


@pytest.fixture(scope="session")
async def sse_gateway(
    demo_sse_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    """Key-less gateway with the demo over the legacy HTTP+SSE transport (`old__`)."""
    config = write_config(
        tmp_path_factory.mktemp("sse-gateway"),
        f"""
database: ./gw.db
auth: {{required: false}}
upstreams:
  - name: old
    transport: sse
    url: {demo_sse_url}
""",
    )
    async with serve_gateway(config) as running:
        yield running
