"""What `mcpgw serve` writes on stderr: the start-up lines, one line per call, the access log,
in text or JSON, at the level the config or the command line sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx2
import orjson

from tests.api.conftest import McpClient
from tests.gateway.cli.commands import MCPGW, TIMEOUT, child, copy_example, free_port, run_mcpgw

SECRET_ARGUMENT = "sk-ant-api03-this-must-never-be-logged"
CONNECT_LINK = "a-connect-link-that-must-never-be-logged"


async def keyed_example(tmp_path: Path, logging_yaml: str) -> tuple[Path, dict[str, str]]:
    """The example config with keys required and `logging_yaml` added; and a key made for it."""
    config = copy_example(tmp_path, **{"required: false": "required: true"})
    config.write_text(config.read_text() + logging_yaml)
    code, out, err = await run_mcpgw("keys", "create", "--config", str(config), "--org", "default")
    assert code == 0, err
    created: dict[str, str] = orjson.loads(out)
    return config, created


async def serve_and_call(
    config: Path, key: str, *extra: str, ready: bytes = b"Uvicorn running on"
) -> tuple[str, str]:
    """Serve `config`, open a session, make two calls, stop; (the whole stderr, the session id)."""
    port = free_port()
    command = [*MCPGW, "serve", "--config", str(config), "--port", str(port), *extra]
    async with (
        child(command, config.parent, ready=ready) as served,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
    ):
        client = McpClient(http, f"http://127.0.0.1:{port}/mcp", key)
        with anyio.fail_after(TIMEOUT):
            session = await client.open()
            await client.call(session, "demo__echo", {"text": SECRET_ARGUMENT})
            await client.call(session, "demo__fail", {"message": SECRET_ARGUMENT})
            # A connect link and an OAuth callback's query are secrets in a URL.
            await http.get(f"http://127.0.0.1:{port}/connect/{CONNECT_LINK}")
            await http.get(f"http://127.0.0.1:{port}/oauth/callback?code={CONNECT_LINK}&state=x")
    return served.log, session  # complete: the child has ended and its stderr is read to the end


def json_lines(log: str) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in log.splitlines() if line.strip()]
    assert all(isinstance(line, dict) for line in lines)
    return lines


async def test_each_call_is_one_json_line_with_who_what_outcome_ms_and_trace_and_never_its_arguments(
    tmp_path: Path,
) -> None:
    config, created = await keyed_example(tmp_path, "logging: {format: json, access_log: true}\n")
    log, session = await serve_and_call(config, created["key"])
    lines = json_lines(log)  # every line is JSON, uvicorn's included
    calls = [line for line in lines if line["logger"] == "mcpgw.calls"]
    assert [(c["tool"], c["outcome"]) for c in calls] == [("demo__echo", "ok"), ("demo__fail", "tool_error")]
    for call in calls:
        assert call["level"] == "info"
        assert call["session"] == session  # the Mcp-Session-Id the host holds
        assert call["key"] == created["apiKeyId"]
        assert (call["method"], call["upstream"]) == ("tools/call", "demo")
        assert isinstance(call["ms"], float) and call["ms"] >= call["upstream_ms"] >= 0
        assert len(call["trace"]) == 32
    access = [line for line in lines if line["logger"] == "mcpgw.access"]
    assert {(a["method"], a["path"], a["status"]) for a in access} >= {
        ("POST", "/mcp", 200),  # a request
        ("POST", "/mcp", 202),  # notifications/initialized
    }
    assert {(a["method"], a["path"]) for a in access} >= {("GET", "/connect/…"), ("GET", "/oauth/callback")}
    assert SECRET_ARGUMENT not in log and CONNECT_LINK not in log
    assert created["key"] not in log


async def test_serve_says_at_start_where_it_serves_its_auth_mode_database_and_upstreams(
    tmp_path: Path,
) -> None:
    config, created = await keyed_example(tmp_path, "")
    log, session = await serve_and_call(config, created["key"])
    assert "MCP endpoint http://127.0.0.1:" in log
    assert "auth: API keys required" in log
    assert f"database: {tmp_path / 'mcpgw.db'} (recording on)" in log
    assert "upstream demo: stdio python" in log
    assert "metrics: /metrics (loopback clients only)" in log
    echo, fail = [line for line in log.splitlines() if "mcpgw.calls: call" in line]  # text: key=value
    assert f"session={session}" in echo and "tool=demo__echo" in echo and "outcome=ok" in echo
    assert "tool=demo__fail" in fail and "outcome=tool_error" in fail
    assert "mcpgw.access" not in log  # the access log is off unless asked for
    assert SECRET_ARGUMENT not in log and CONNECT_LINK not in log


async def test_the_command_lines_log_level_wins_over_the_configs(tmp_path: Path) -> None:
    config, created = await keyed_example(tmp_path, "logging: {level: debug}\n")
    # At warning, uvicorn's "running" line is not written; the warning that a key file was
    # created is, during start-up, once the port is bound (connections queue until it accepts).
    ready = b"the key that encrypts stored credentials"
    log, _ = await serve_and_call(config, created["key"], "--log-level", "warning", ready=ready)
    assert " WARNING " in log
    assert "mcpgw.calls" not in log
    assert "MCP endpoint" not in log
    assert " INFO " not in log and " DEBUG " not in log


async def test_mcpgw_version_prints_the_installed_version() -> None:
    code, out, err = await run_mcpgw("--version")
    assert code == 0, err
    assert out.strip().startswith("mcpgw ") and out.strip() != "mcpgw unknown"
