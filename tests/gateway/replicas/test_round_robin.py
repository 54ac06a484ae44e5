"""Two replicas on one PostgreSQL database behind a round-robin transport: what a host sees."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx2

from tests.harness import demo_stdio_yaml
from tests.replicas import RoundRobin, replica_configs, serve_replicas

ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def modern_call(n: int) -> dict[str, object]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "rr", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    params = {"name": "demo__echo", "arguments": {"text": f"hi {n}"}, "_meta": meta}
    return {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": params}


async def test_a_2026_host_is_answered_by_every_replica_in_turn(tmp_path: Path, postgres_url: str) -> None:
    configs = replica_configs(
        tmp_path, postgres_url, demo_stdio_yaml(sessions="shared"), extra_yaml="auth: {required: false}\n"
    )
    async with serve_replicas(configs) as replicas:
        transport = RoundRobin([r.base_url for r in replicas])
        headers = {**ACCEPT, "mcp-protocol-version": "2026-07-28"}
        async with httpx2.AsyncClient(transport=transport) as client:
            with anyio.fail_after(30):
                for n in range(4):
                    reply = await client.post(
                        f"{replicas[0].url}",
                        json=modern_call(n),
                        headers={**headers, "mcp-method": "tools/call", "mcp-name": "demo__echo"},
                    )
                    assert reply.status_code == 200, reply.text
        assert set(transport.sent) == {r.base_url for r in replicas}
