"""A session's server-to-host stream open on one replica hears what reaches the others for it.

A 2026-07-28 host's requests are grouped by key and client whichever replica serves them; the
group's upstream sessions are per replica (a `per_host` stdio child on each). A list change the
host causes through replica A, on A's upstream session, must reach the host's listen stream
open on replica B.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.harness import demo_stdio_yaml
from tests.replicas import replica_configs, serve_replicas

pytestmark = pytest.mark.anyio

TIMEOUT = 30.0
MODERN = "2026-07-28"


async def test_a_listen_stream_on_one_replica_hears_the_groups_upstream_session_on_the_other(
    tmp_path: Path, postgres_url: str
) -> None:
    configs = replica_configs(
        tmp_path, postgres_url, demo_stdio_yaml(), extra_yaml="auth: {required: false}\n"
    )
    host = types.Implementation(name=f"listener-{uuid.uuid4().hex[:8]}", version="1")
    # One host application, its listen stream on B and its calls on A: one group.
    async with (
        serve_replicas(configs) as (a, b),
        Client(b.url, mode=MODERN, client_info=host, cache=None) as listening,
        Client(a.url, mode=MODERN, client_info=host, cache=None) as calling,
    ):
        with anyio.fail_after(TIMEOUT):
            async with listening.listen(tools_list_changed=True) as subscription:
                added = f"late_{uuid.uuid4().hex[:8]}"
                result = await calling.call_tool("demo__add_tool", {"name": added})
                assert not result.is_error, result
                async for event in subscription:
                    assert type(event).__name__ == "ToolsListChanged"
                    break
