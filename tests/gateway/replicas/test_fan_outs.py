"""What one replica hears of an upstream reaches every replica's hosts.

A shared upstream session on replica B says its tool list changed (a host's call through B
added a tool): the hosts whose streams are open on replica A must be told too, or they keep
routing from a stale list until they happen to list again.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.harness import start_demo_http, stop_process
from tests.replicas import replica_configs, serve_replicas

pytestmark = pytest.mark.anyio

TIMEOUT = 30.0


@pytest.fixture
async def shared_demo_yaml() -> AsyncIterator[str]:
    """The demo over HTTP, one server behind both replicas, reached through shared sessions."""
    proc, url = await start_demo_http()
    try:
        yield f"\n  - {{name: web, transport: http, url: '{url}', sessions: shared}}"
    finally:
        await stop_process(proc)


async def test_a_get_stream_on_one_replica_hears_a_list_change_caused_through_the_other(
    tmp_path: Path, postgres_url: str, shared_demo_yaml: str
) -> None:
    configs = replica_configs(
        tmp_path, postgres_url, shared_demo_yaml, extra_yaml="auth: {required: false}\n"
    )
    told = anyio.Event()

    async def on_message(message: object) -> None:
        if (
            isinstance(message, types.ServerNotification)
            and message.method == "notifications/tools/list_changed"
        ):
            told.set()

    added = f"late_{uuid.uuid4().hex[:8]}"
    async with (
        serve_replicas(configs) as (a, b),
        Client(a.url, mode="legacy", message_handler=on_message, cache=None) as host,
    ):
        with anyio.fail_after(TIMEOUT):
            assert "web__echo" in {tool.name for tool in (await host.list_tools()).tools}
            async with Client(b.url, mode="legacy") as other:
                await other.call_tool("web__add_tool", {"name": added})
            await told.wait()
            # Told on its GET stream (on A), the host lists again and finds the new tool.
            assert f"web__{added}" in {tool.name for tool in (await host.list_tools()).tools}
