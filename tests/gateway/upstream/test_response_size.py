"""An upstream's answer is read up to `security.max_upstream_response_bytes`, never buffered
whole past it: the host gets a JSON-RPC error naming the limit, the call is recorded as an
upstream error with that message, and the upstream keeps serving calls within the limit.

The demo's `echo` tool over HTTP (SSE answers, and JSON ones with `--json-response`), over the
legacy HTTP+SSE transport and over stdio answers what it is sent, so a text longer than the
(small, configured) limit makes a real server answer too much.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from tests.harness import (
    INITIALIZE,
    RunningGateway,
    demo_stdio_yaml,
    serve_gateway,
    start_demo_http,
    stop_process,
    write_config,
)

TIMEOUT = 20.0
LIMIT = 64 * 1024
ACCEPT = {"accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
async def demo_json_url() -> AsyncIterator[str]:
    """The demo answering POSTs with one JSON body (the other path through the HTTP client)."""
    proc, url = await start_demo_http("--json-response")
    yield url
    await stop_process(proc)


@pytest.fixture(scope="module")
async def gateway(
    tmp_path_factory: pytest.TempPathFactory, demo_http_url: str, demo_json_url: str, demo_sse_url: str
) -> AsyncIterator[RunningGateway]:
    config = write_config(
        tmp_path_factory.mktemp("response-size"),
        f"""
database: ./gw.db
auth: {{required: false}}
security: {{max_upstream_response_bytes: {LIMIT}}}
upstreams:
  - name: web
    transport: http
    url: {demo_http_url}
  - name: plain
    transport: http
    url: {demo_json_url}
  - name: old
    transport: sse
    url: {demo_sse_url}
{demo_stdio_yaml()}
""",
    )
    async with serve_gateway(config) as running:
        yield running


def recorded(database: Path, request_id: int) -> sqlite3.Row:
    with closing(sqlite3.connect(database)) as db:
        db.row_factory = sqlite3.Row
        row: sqlite3.Row | None = db.execute(
            "SELECT * FROM invocations WHERE request_id = ? ORDER BY seq DESC LIMIT 1", (str(request_id),)
        ).fetchone()
    assert row is not None, f"no recorded call {request_id}"
    return row


async def call(
    http: httpx2.AsyncClient, url: str, session: dict[str, str], tool: str, text: str, n: int
) -> Any:
    message = {
        "jsonrpc": "2.0",
        "id": n,
        "method": "tools/call",
        "params": {"name": tool, "arguments": {"text": text}},
    }
    with anyio.fail_after(TIMEOUT):
        answer = await http.post(url, json=message, headers=session)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.parametrize(
    ("tool", "n"),
    [("web__echo", 100), ("plain__echo", 300), ("demo__echo", 200), ("old__echo", 400)],
    ids=["http-sse", "http-json", "stdio", "legacy-sse"],
)
async def test_an_upstream_answer_over_the_limit_is_an_error_naming_it_and_recorded_as_such(
    gateway: RunningGateway, tool: str, n: int
) -> None:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        with anyio.fail_after(TIMEOUT):
            opened = await http.post(gateway.url, json=INITIALIZE, headers=ACCEPT)
        assert opened.status_code == 200, opened.text
        session = {**ACCEPT, "mcp-session-id": opened.headers["mcp-session-id"]}
        answer = await call(http, gateway.url, session, tool, "x" * (2 * LIMIT), n)
        assert answer["error"]["code"] == -32001, answer
        assert "max_upstream_response_bytes" in answer["error"]["message"]
        row = recorded(gateway.gateway.config.database, n)
        assert row["outcome"] == "upstream_error"
        assert "max_upstream_response_bytes" in row["result_json"]
        # Within the limit the upstream answers as before.
        answer = await call(http, gateway.url, session, tool, "small", n + 1)
        assert answer["result"]["content"][0]["text"] == "small", answer
