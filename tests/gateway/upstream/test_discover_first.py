"""A handshake-era host reaches an upstream that serves both eras through a handshake-era
session (`initialize` first), where everything passes through as it is, nothing bridged.

Asking `server/discover` before any `initialize` cannot choose better: the SDK's dual-era
server lists only 2026-07-28 in `supportedVersions`, though it serves `initialize` too, so
"2026-07-28 only" and "both" look the same, and reaching such servers statelessly from
handshake-era hosts fails five tests of tests/gateway/core (elicitation defaults, tasks, a
re-initialised session's deadline). This guards that choice (issue 26 item 5: the suite's
`request-metadata` wants no `initialize` at all, which the gateway sends a 2026-07-28-only
server only for a handshake-era host, before it learns that the server refuses it).

The upstream is a real SDK server; a filter in front of it records what it is sent."""

from __future__ import annotations

from pathlib import Path

import anyio
from mcp import Client

from tests.harness import keyless_config, serve_asgi, serve_gateway
from tests.upstreams import Recording, catalogue_server

TIMEOUT = 20.0


async def test_an_upstream_of_both_eras_gets_a_handshake_session_for_a_handshake_host(tmp_path: Path) -> None:
    recording = Recording(catalogue_server("cat").streamable_http_app())
    async with serve_asgi(recording) as base:
        upstream = f"\n  - {{name: cat, transport: http, url: '{base}/mcp', prefix: ''}}"
        async with (
            serve_gateway(keyless_config(tmp_path, upstream)) as gateway,
            Client(gateway.url, mode="legacy", cache=None) as client,
        ):
            with anyio.fail_after(TIMEOUT):
                result = await client.call_tool("search", {"query": "frogs"})
    assert not result.is_error
    methods = [m.get("method") for m in recording.posted]
    assert "initialize" in methods, methods
    (call,) = [m for m in recording.posted if m.get("method") == "tools/call"]
    params = call["params"]
    assert isinstance(params, dict)
    assert "io.modelcontextprotocol/protocolVersion" not in (params.get("_meta") or {})  # not bridged
