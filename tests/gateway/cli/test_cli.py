"""The `mcpgw` command as a user runs it: serve the example config, create and revoke keys, list sessions."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from store import hash_api_key
from tests.gateway.cli.commands import (
    TIMEOUT,
    copy_example,
    free_port,
    mcpgw_serve,
    run_mcpgw,
)
from tests.harness import INITIALIZE as INIT


async def test_the_example_config_serves_the_demo_upstream(tmp_path: Path) -> None:
    config = copy_example(tmp_path)
    async with mcpgw_serve(config, free_port()) as url, Client(url, mode="legacy") as client:
        with anyio.fail_after(TIMEOUT):
            tools = await client.list_tools()
            result = await client.call_tool("demo__echo", {"text": "from the README"})
    assert "demo__echo" in {tool.name for tool in tools.tools}
    block = result.content[0]
    assert isinstance(block, types.TextContent) and block.text == "from the README"
    assert (tmp_path / "mcpgw.db").exists()  # the embedded database lives beside the config


async def test_mcpgw_sessions_lists_the_record_and_shows_one_sessions_calls(tmp_path: Path) -> None:
    config = copy_example(tmp_path)
    async with mcpgw_serve(config, free_port()) as url, Client(url, mode="legacy") as client:
        with anyio.fail_after(TIMEOUT):
            await client.call_tool("demo__echo", {"text": "one"})
            await client.call_tool("demo__fail", {})
    code, listing, err = await run_mcpgw("sessions", "--config", str(config))
    assert code == 0, err
    header, row = listing.splitlines()
    assert header.split()[:4] == ["LAST", "CALL", "(UTC)", "SESSION"]
    session_id = row.split()[2]
    assert row.split()[-3:] == ["2", "ended", "(deleted)"]  # two calls; the client ended it with DELETE

    code, shown, err = await run_mcpgw("sessions", "show", session_id, "--config", str(config))
    assert code == 0, err
    calls = [line.split() for line in shown.splitlines()[2:]]
    assert [(c[2], c[3], c[4]) for c in calls] == [
        ("tools/call", "demo__echo", "ok"),
        ("tools/call", "demo__fail", "tool_error"),
    ]
    assert all(len(c[6]) == 32 for c in calls)  # the trace id

    code, _, err = await run_mcpgw("sessions", "show", "no-such-session", "--config", str(config))
    assert code == 1 and "no session" in err + _


async def test_a_key_created_while_serving_works_at_once(tmp_path: Path) -> None:
    config = copy_example(tmp_path, **{"required: false": "required: true"})
    async with mcpgw_serve(config, free_port()) as url:
        async with httpx2.AsyncClient() as http:
            refused = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert refused.status_code == 401
        code, out, err = await run_mcpgw(
            "keys", "create", "--config", str(config), "--org", "acme", "--user", "ada"
        )
        assert code == 0, err
        created = json.loads(out)
        assert set(created) == {"organisationId", "apiKeyId", "key"}
        assert created["key"].startswith("mgw_")
        async with (
            httpx2.AsyncClient(headers={"authorization": f"Bearer {created['key']}"}) as http,
            Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
        ):
            with anyio.fail_after(TIMEOUT):
                result = await client.call_tool("demo__echo", {"text": "keyed"})
        assert not result.is_error


ACCEPT = {"accept": "application/json, text/event-stream"}


async def create_key(config: Path, *args: str) -> dict[str, str]:
    code, out, err = await run_mcpgw("keys", "create", "--config", str(config), "--org", "acme", *args)
    assert code == 0, err
    created: dict[str, str] = json.loads(out)
    return created


async def test_keys_list_shows_each_key_and_revoke_refuses_it_on_the_very_next_request(
    tmp_path: Path,
) -> None:
    config = copy_example(tmp_path, **{"required: false": "required: true"})
    async with mcpgw_serve(config, free_port()) as url, httpx2.AsyncClient(timeout=TIMEOUT) as http:
        ada = await create_key(config, "--user", "ada", "--admin", "--deny", "demo__fail")
        bob = await create_key(config, "--user", "bob")
        unused = await create_key(config)
        base = url.removesuffix("/mcp")
        sessions = f"{base}/mcp/{ada['organisationId']}/sessions"
        with anyio.fail_after(TIMEOUT):
            opened = await http.post(url, json=INIT, headers={**ACCEPT, "x-api-key": ada["key"]})
            assert opened.status_code == 200, opened.text
            session = {**ACCEPT, "x-api-key": ada["key"], "mcp-session-id": opened.headers["mcp-session-id"]}
            assert (await http.get(sessions, headers={"x-api-key": ada["key"]})).status_code == 200
            assert (
                await http.post(url, json=INIT, headers={**ACCEPT, "x-api-key": bob["key"]})
            ).status_code == 200

        code, out, err = await run_mcpgw("keys", "list", "--org", "acme", "--config", str(config), "--json")
        assert code == 0, err
        listed = json.loads(out)
        assert [row["apiKeyId"] for row in listed] == [ada["apiKeyId"], bob["apiKeyId"], unused["apiKeyId"]]
        first = listed[0]
        assert (first["userId"], first["admin"], first["toolsAllow"], first["toolsDeny"]) == (
            "ada",
            True,
            ["*"],
            ["demo__fail"],
        )
        assert first["createdAt"] and first["revokedAt"] is None and "lastUsedAt" in first
        code, table, err = await run_mcpgw("keys", "list", "--org", "acme", "--config", str(config))
        assert code == 0, err
        assert table.splitlines()[0].split()[:3] == ["ID", "PREFIX", "USER"]
        assert all(key["apiKeyId"] in table for key in (ada, bob, unused))
        for key in (ada, bob, unused):  # never a key, nor its hash
            assert key["key"] not in out + table and hash_api_key(key["key"]) not in out + table

        code, out, err = await run_mcpgw("keys", "revoke", ada["apiKeyId"], "--config", str(config))
        assert code == 0, err
        assert json.loads(out) == {"apiKeyId": ada["apiKeyId"], "revoked": True}
        with anyio.fail_after(TIMEOUT):
            ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
            assert (await http.post(url, json=ping, headers=session)).status_code == 401
            assert (await http.get(sessions, headers={"x-api-key": ada["key"]})).status_code == 401
            assert (
                await http.post(url, json=INIT, headers={**ACCEPT, "x-api-key": bob["key"]})
            ).status_code == 200

        code, _, err = await run_mcpgw("keys", "revoke", str(uuid.uuid4()), "--config", str(config))
        assert code == 1 and "no API key" in err
        code, _, err = await run_mcpgw("keys", "list", "--org", "initech", "--config", str(config))
        assert code == 1 and "no organisation" in err

    # The gateway writes last use in the background, and what is left when it stops.
    code, out, err = await run_mcpgw("keys", "list", "--org", "acme", "--config", str(config), "--json")
    assert code == 0, err
    used = {row["apiKeyId"]: (row["lastUsedAt"], row["revokedAt"]) for row in json.loads(out)}
    assert used[ada["apiKeyId"]][0] and used[ada["apiKeyId"]][1]
    assert used[bob["apiKeyId"]][0] and used[bob["apiKeyId"]][1] is None
    assert used[unused["apiKeyId"]] == (None, None)


async def test_mcpgw_sessions_shows_whose_key_and_finds_a_session_by_the_mcp_session_id_a_log_shows(
    tmp_path: Path,
) -> None:
    config = copy_example(tmp_path, **{"required: false": "required: true"})
    ada = await create_key(config, "--user", "ada")
    async with mcpgw_serve(config, free_port()) as url, httpx2.AsyncClient(timeout=TIMEOUT) as http:
        with anyio.fail_after(TIMEOUT):
            opened = await http.post(url, json=INIT, headers={**ACCEPT, "x-api-key": ada["key"]})
            mcp_session_id = opened.headers["mcp-session-id"]
            headers = {**ACCEPT, "x-api-key": ada["key"], "mcp-session-id": mcp_session_id}
            call = {"name": "demo__echo", "arguments": {"text": "hi"}}
            for request_id, (method, params) in enumerate(
                [("tools/call", call), ("resources/read", {"uri": "demo://readme"})], start=2
            ):
                message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
                assert (await http.post(url, json=message, headers=headers)).status_code == 200

    code, listing, err = await run_mcpgw("sessions", "--config", str(config))
    assert code == 0, err
    header, row = listing.splitlines()
    assert header.split()[3:5] == ["SESSION", "USER"]
    record_id, user = row.split()[2:4]
    assert user == "ada"

    for session_id in (mcp_session_id, record_id):
        code, shown, err = await run_mcpgw("sessions", "show", session_id, "--config", str(config))
        assert code == 0, err
        assert record_id in shown.splitlines()[0] and "ada" in shown.splitlines()[0]
        assert shown.splitlines()[1].split()[2:4] == ["METHOD", "TOOL"]
        calls = [line.split() for line in shown.splitlines()[2:]]
        assert [(c[2], c[3], c[4]) for c in calls] == [
            ("tools/call", "demo__echo", "ok"),
            ("resources/read", "demo://readme", "ok"),
        ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"transport: stdio": "transport: carrier-pigeon"}, "upstreams[0].transport"),
        ({"listen:": "listen:\n  colour: blue"}, "listen.colour"),
        (
            # auth's own key, not an upstream's commented `required: false`
            {"\n  required: false\n": "\n  required: false\n  secret: ${MCPGW_TEST_UNSET_VARIABLE}\n"},
            "MCPGW_TEST_UNSET_VARIABLE",
        ),
    ],
    ids=["bad-transport", "unknown-key", "unset-env"],
)
async def test_a_bad_config_stops_serve_naming_file_key_and_reason(
    tmp_path: Path, change: dict[str, str], expected: str
) -> None:
    config = copy_example(tmp_path, **change)
    code, _, err = await run_mcpgw("serve", "--config", str(config))
    assert code == 2
    assert str(config) in err or "config.yaml" in err
    assert expected in err


async def test_serve_answers_a_silent_connection_408_and_too_many_headers_431(tmp_path: Path) -> None:
    config = copy_example(tmp_path, **{"\nlisten:\n": "\nsecurity: {header_timeout_s: 1}\nlisten:\n"})
    port = free_port()
    async with mcpgw_serve(config, port):
        silent = await asyncio.open_connection("127.0.0.1", port)
        crowded = await asyncio.open_connection("127.0.0.1", port)
        headers = "".join(f"x-filler-{i}: {i}\r\n" for i in range(101))
        crowded[1].write(f"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n{headers}\r\n".encode())
        with anyio.fail_after(TIMEOUT):
            refused = await crowded[0].read()
            timed_out = await silent[0].read()
        for _, writer in (silent, crowded):
            writer.close()
    assert refused.startswith(b"HTTP/1.1 431 ")
    assert timed_out.startswith(b"HTTP/1.1 408 ")


async def test_keyless_mode_refuses_a_non_loopback_listen_address(tmp_path: Path) -> None:
    config = copy_example(tmp_path)
    code, _, err = await run_mcpgw("serve", "--config", str(config), "--host", "0.0.0.0")
    assert code == 2
    assert "loopback" in err


async def test_links_name_the_address_the_gateway_serves_on_when_public_url_is_not_set(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        """
database: ./gw.db
auth: {required: false}
listen: {host: 127.0.0.1, port: 8080}
upstreams:
  - name: vault
    transport: http
    url: http://127.0.0.1:9/mcp
    auth: {kind: user_headers, identity: session, headers: [X-Api-Key]}
"""
    )
    port = free_port()
    async with mcpgw_serve(config, port) as url, Client(url, mode="legacy") as client:
        with anyio.fail_after(TIMEOUT):
            result = await client.call_tool("vault__connect_account", {})
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    assert f"http://127.0.0.1:{port}/connect/" in block.text, block.text
