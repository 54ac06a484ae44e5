"""The host-facing endpoint on bad input: each case gets the right status and error, never a 500 or a hang."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from store import generate_api_key
from tests.harness import INITIALIZE as INIT
from tests.harness import ROOT, RunningGateway, demo_stdio_yaml, serve_gateway, write_config

TIMEOUT = 20.0
ACCEPT = {"accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
async def keyed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    config = write_config(
        tmp_path_factory.mktemp("keyed"),
        f"""
database: ./gw.db
auth: {{required: true}}
security: {{max_body_bytes: 4096}}
upstreams:{demo_stdio_yaml(extra="    tools: {deny: [fail]}")}
""",
    )
    async with serve_gateway(config) as running:
        yield running


async def new_key(gateway: RunningGateway, organisation: str = "acme") -> tuple[str, str]:
    store = gateway.gateway.store
    org = await store.ensure_organisation(organisation)
    created = await store.create_api_key(org.id)
    return org.id, created.secret


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as client:
        yield client


async def open_session(http: httpx2.AsyncClient, url: str, key: str) -> str:
    response = await http.post(url, json=INIT, headers={**ACCEPT, "x-api-key": key})
    assert response.status_code == 200
    session_id = response.headers["mcp-session-id"]
    await http.post(
        url,
        json={"jsonrpc": "2.0", "method": "notifications/initialized"},
        headers={**ACCEPT, "x-api-key": key, "mcp-session-id": session_id},
    )
    return session_id


async def rpc(
    http: httpx2.AsyncClient, url: str, key: str, session: str, method: str, params: dict[str, Any]
) -> httpx2.Response:
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}
    with anyio.fail_after(TIMEOUT):
        return await http.post(
            url, json=body, headers={**ACCEPT, "x-api-key": key, "mcp-session-id": session}
        )


async def test_a_missing_key_is_a_401_that_asks_for_the_key_and_invites_no_oauth_flow(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    """Without host sign-in there is no authorization server: a Bearer challenge would send the
    Inspector or mcp-remote into an OAuth flow that can only fail, so the challenge names the key."""
    response = await http.post(keyed.url, json=INIT, headers=ACCEPT)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert not challenge.lower().startswith("bearer") and "resource_metadata" not in challenge
    message = response.json()["error"]["message"]
    assert "missing API key" in message and "x-api-key or Authorization: Bearer" in message
    assert (await http.get(f"{keyed.base_url}/.well-known/oauth-protected-resource/mcp")).status_code == 404
    assert (await http.get(f"{keyed.base_url}/.well-known/oauth-authorization-server")).status_code == 404


async def test_unknown_key_is_401(keyed: RunningGateway, http: httpx2.AsyncClient) -> None:
    response = await http.post(keyed.url, json=INIT, headers={**ACCEPT, "authorization": "Bearer mgw_nope"})
    assert response.status_code == 401
    assert "unknown API key" in response.json()["error"]["message"]


_REVOKE_IN_ANOTHER_PROCESS = """
import sys, anyio
from store import open_sqlite_store

async def main() -> None:
    async with open_sqlite_store(sys.argv[1]) as store:
        await store.revoke_api_key(sys.argv[2])

anyio.run(main)
"""


async def test_a_key_revoked_by_another_process_is_refused_on_the_very_next_request(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    store = keyed.gateway.store
    org = await store.ensure_organisation("acme")
    created = await store.create_api_key(org.id)
    headers = {**ACCEPT, "x-api-key": created.secret}
    assert (await http.post(keyed.url, json=INIT, headers=headers)).status_code == 200  # now remembered
    with anyio.fail_after(TIMEOUT):
        await anyio.run_process(
            [
                sys.executable,
                "-c",
                _REVOKE_IN_ANOTHER_PROCESS,
                str(keyed.gateway.config.database),
                created.key.id,
            ],
            cwd=ROOT,
        )
    refused = await http.post(keyed.url, json=INIT, headers=headers)
    assert refused.status_code == 401 and "API key was revoked" in refused.json()["error"]["message"]


async def test_past_the_failure_limit_an_address_gets_429_with_retry_after(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    config = write_config(
        tmp_path, "database: ./gw.db\nauth: {required: true, max_failures_per_minute: 3}\nupstreams: []\n"
    )
    async with serve_gateway(config) as running:
        _, good = await new_key(running)
        assert (
            await http.post(running.url, json=INIT, headers={**ACCEPT, "x-api-key": good})
        ).status_code == 200
        statuses = []
        for _ in range(5):
            bad = await http.post(running.url, json=INIT, headers={**ACCEPT, "x-api-key": generate_api_key()})
            statuses.append(bad.status_code)
        assert statuses == [401, 401, 401, 429, 429]
        assert bad.headers["retry-after"] == "20"
        assert "Too many failed" in bad.json()["error"]["message"]
        # The organisation's own listing answers the same way, in its own error format.
        listing = await http.get(
            f"{running.base_url}/mcp/x/sessions", headers={"x-api-key": generate_api_key()}
        )
        assert listing.status_code == 429 and listing.headers["retry-after"]
        assert listing.headers["content-type"] == "application/problem+json"
        admin = await http.get(
            f"{running.base_url}/api/mcp/sessions", headers={"x-api-key": generate_api_key()}
        )
        assert admin.status_code == 429 and admin.headers["retry-after"]
        page = await http.get(
            f"{running.base_url}/connect/{uuid.uuid4()}", headers={"x-api-key": generate_api_key()}
        )
        assert page.status_code == 429 and page.headers["retry-after"]
        # A key the gateway already knows still works from the same address.
        assert (
            await http.post(running.url, json=INIT, headers={**ACCEPT, "x-api-key": good})
        ).status_code == 200


async def test_key_works_as_bearer_or_x_api_key(keyed: RunningGateway, http: httpx2.AsyncClient) -> None:
    _, key = await new_key(keyed)
    for headers in ({"authorization": f"Bearer {key}"}, {"x-api-key": key}):
        response = await http.post(keyed.url, json=INIT, headers={**ACCEPT, **headers})
        assert response.status_code == 200, response.text
        assert response.json()["result"]["serverInfo"]["name"] == "mcpgw"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", -32700),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": 5}', -32600),
        (b'{"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}', -32600),
        (b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]', -32600),
        (b'"just a string"', -32600),
    ],
    ids=["malformed", "wrong-version", "method-not-string", "id-object", "batch", "not-object"],
)
async def test_malformed_bodies_are_400_with_json_rpc_error(
    keyed: RunningGateway, http: httpx2.AsyncClient, body: bytes, code: int
) -> None:
    _, key = await new_key(keyed)
    response = await http.post(
        keyed.url, content=body, headers={**ACCEPT, "x-api-key": key, "content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


async def test_oversized_body_is_413(keyed: RunningGateway, http: httpx2.AsyncClient) -> None:
    _, key = await new_key(keyed)
    big = {**INIT, "params": {**INIT["params"], "padding": "x" * 10_000}}
    response = await http.post(keyed.url, json=big, headers={**ACCEPT, "x-api-key": key})
    assert response.status_code == 413


async def test_request_without_session_id_is_400(keyed: RunningGateway, http: httpx2.AsyncClient) -> None:
    _, key = await new_key(keyed)
    body = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    response = await http.post(keyed.url, json=body, headers={**ACCEPT, "x-api-key": key})
    assert response.status_code == 400
    assert "Mcp-Session-Id" in response.json()["error"]["message"]


async def test_unknown_session_is_404(keyed: RunningGateway, http: httpx2.AsyncClient) -> None:
    _, key = await new_key(keyed)
    response = await rpc(http, keyed.url, key, "no-such-session", "tools/list", {})
    assert response.status_code == 404


async def test_session_of_another_key_is_404(keyed: RunningGateway, http: httpx2.AsyncClient) -> None:
    _, owner = await new_key(keyed)
    _, other = await new_key(keyed)
    _, foreign = await new_key(keyed, "globex")
    session = await open_session(http, keyed.url, owner)
    assert (await rpc(http, keyed.url, owner, session, "ping", {})).status_code == 200
    assert (await rpc(http, keyed.url, other, session, "ping", {})).status_code == 404
    assert (await rpc(http, keyed.url, foreign, session, "ping", {})).status_code == 404


async def test_organisation_url_of_another_tenant_is_404(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    organisation, key = await new_key(keyed)
    other_org, _ = await new_key(keyed, "initech")
    mine = await http.post(f"{keyed.url}/{organisation}", json=INIT, headers={**ACCEPT, "x-api-key": key})
    theirs = await http.post(f"{keyed.url}/{other_org}", json=INIT, headers={**ACCEPT, "x-api-key": key})
    assert mine.status_code == 200
    assert theirs.status_code == 404


@pytest.mark.parametrize("suffix", ["", "/{organisation}"])
async def test_other_http_methods_on_the_mcp_url_are_405_naming_the_allowed_ones(
    keyed: RunningGateway, http: httpx2.AsyncClient, suffix: str
) -> None:
    organisation, key = await new_key(keyed)
    url = keyed.url + suffix.format(organisation=organisation)
    response = await http.put(url, json=INIT, headers={**ACCEPT, "x-api-key": key})
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST, DELETE"
    assert response.json()["error"]["message"] == "Method Not Allowed"


async def test_a_path_below_the_organisation_url_is_not_the_mcp_endpoint(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    organisation, key = await new_key(keyed)
    response = await http.post(
        f"{keyed.url}/{organisation}/nope", json=INIT, headers={**ACCEPT, "x-api-key": key}
    )
    assert response.status_code == 404


async def test_unknown_method_is_method_not_found(keyed: RunningGateway, http: httpx2.AsyncClient) -> None:
    _, key = await new_key(keyed)
    session = await open_session(http, keyed.url, key)
    response = await rpc(http, keyed.url, key, session, "tools/frobnicate", {})
    assert response.json()["error"]["code"] == -32601


@pytest.mark.parametrize("name", ["demo__nope", "nope", "demo__fail", "", "other__echo"])
async def test_unknown_or_filtered_tool_is_invalid_params(
    keyed: RunningGateway, http: httpx2.AsyncClient, name: str
) -> None:
    _, key = await new_key(keyed)
    session = await open_session(http, keyed.url, key)
    response = await rpc(http, keyed.url, key, session, "tools/call", {"name": name, "arguments": {}})
    assert response.status_code == 200
    assert response.json()["error"]["code"] == -32602
    assert "Unknown tool" in response.json()["error"]["message"]


async def test_filtered_tool_is_not_listed(keyed: RunningGateway, http: httpx2.AsyncClient) -> None:
    _, key = await new_key(keyed)
    session = await open_session(http, keyed.url, key)
    response = await rpc(http, keyed.url, key, session, "tools/list", {})
    names = {tool["name"] for tool in response.json()["result"]["tools"]}
    assert "demo__echo" in names
    assert "demo__fail" not in names


async def test_a_key_filter_narrows_tools_and_never_widens_them(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    store = keyed.gateway.store
    org = await store.ensure_organisation("acme")
    narrow = (await store.create_api_key(org.id, tools_allow=["demo__*"], tools_deny=["demo__wait"])).secret
    session = await open_session(http, keyed.url, narrow)
    listed = await rpc(http, keyed.url, narrow, session, "tools/list", {})
    names = {tool["name"] for tool in listed.json()["result"]["tools"]}
    assert "demo__echo" in names
    assert "demo__wait" not in names  # denied by the key
    assert "demo__fail" not in names  # denied by the upstream's filter; the key's "demo__*" cannot widen it
    refused = await rpc(
        http, keyed.url, narrow, session, "tools/call", {"name": "demo__wait", "arguments": {}}
    )
    assert "Unknown tool" in refused.json()["error"]["message"]


async def test_tool_call_without_a_name_is_invalid_params(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    _, key = await new_key(keyed)
    session = await open_session(http, keyed.url, key)
    response = await rpc(http, keyed.url, key, session, "tools/call", {"arguments": {}})
    assert response.json()["error"]["code"] == -32602


async def test_delete_ends_the_session(keyed: RunningGateway, http: httpx2.AsyncClient) -> None:
    _, key = await new_key(keyed)
    session = await open_session(http, keyed.url, key)
    deleted = await http.delete(keyed.url, headers={"x-api-key": key, "mcp-session-id": session})
    assert deleted.status_code == 200
    assert (await rpc(http, keyed.url, key, session, "ping", {})).status_code == 404


@pytest.mark.parametrize(
    ("headers", "status"),
    [({"host": "evil.example:8080"}, 421), ({"origin": "http://evil.example"}, 403)],
    ids=["host", "origin"],
)
async def test_dns_rebinding_is_refused(
    keyed: RunningGateway, http: httpx2.AsyncClient, headers: dict[str, str], status: int
) -> None:
    _, key = await new_key(keyed)
    response = await http.post(keyed.url, json=INIT, headers={**ACCEPT, "x-api-key": key, **headers})
    assert response.status_code == status


async def test_loopback_origin_is_allowed(keyed: RunningGateway, http: httpx2.AsyncClient) -> None:
    _, key = await new_key(keyed)
    headers = {**ACCEPT, "x-api-key": key, "origin": "http://localhost:6274"}  # the MCP Inspector's origin
    assert (await http.post(keyed.url, json=INIT, headers=headers)).status_code == 200


async def test_modern_request_with_mismatched_name_header_is_400(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    _, key = await new_key(keyed)
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "demo__echo", "_meta": meta},
    }
    headers = {
        **ACCEPT,
        "x-api-key": key,
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "demo__other",
    }
    response = await http.post(keyed.url, json=body, headers=headers)
    assert response.status_code == 400
    assert "mcp-name" in response.json()["error"]["message"]


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_sdk_client_with_a_key_calls_tools(keyed: RunningGateway, mode: str) -> None:
    _, key = await new_key(keyed)
    async with (
        httpx2.AsyncClient(headers={"authorization": f"Bearer {key}"}) as http,
        Client(streamable_http_client(keyed.url, http_client=http), mode=mode) as client,
    ):
        with anyio.fail_after(TIMEOUT):
            result = await client.call_tool("demo__echo", {"text": "with a key"})
    assert result.content[0].model_dump()["text"] == "with a key"


@pytest.mark.parametrize("version", ["garbage", "2099-01-01", ""])
async def test_an_unknown_protocol_version_header_is_400(
    keyed: RunningGateway, http: httpx2.AsyncClient, version: str
) -> None:
    _, key = await new_key(keyed)
    session = await open_session(http, keyed.url, key)
    headers = {"mcp-protocol-version": version}
    response = await http.post(
        keyed.url,
        json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
        headers={**ACCEPT, "x-api-key": key, "mcp-session-id": session, **headers},
    )
    assert response.status_code == 400
    assert "MCP-Protocol-Version" in response.json()["error"]["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_a_body_that_does_not_say_it_is_json_is_415(
    keyed: RunningGateway, http: httpx2.AsyncClient, content_type: str | None
) -> None:
    _, key = await new_key(keyed)
    headers = {**ACCEPT, "x-api-key": key}
    if content_type is not None:
        headers["content-type"] = content_type
    import json

    response = await http.post(keyed.url, content=json.dumps(INIT).encode(), headers=headers)
    assert response.status_code == 415
    assert response.json()["error"]["code"] == -32600


async def test_json_with_a_charset_is_json(keyed: RunningGateway, http: httpx2.AsyncClient) -> None:
    _, key = await new_key(keyed)
    headers = {**ACCEPT, "x-api-key": key, "content-type": "Application/JSON; charset=utf-8"}
    import json

    response = await http.post(keyed.url, content=json.dumps(INIT).encode(), headers=headers)
    assert response.status_code == 200


async def test_a_second_request_with_an_id_already_in_flight_is_refused_at_once(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    _, key = await new_key(keyed)
    session = await open_session(http, keyed.url, key)
    headers = {**ACCEPT, "x-api-key": key, "mcp-session-id": session}
    slow = {"jsonrpc": "2.0", "id": 5, "method": "tools/call"}
    first_lines: list[str] = []
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            in_flight = anyio.Event()

            async def first() -> None:
                params = {
                    "name": "demo__count_slowly",
                    "arguments": {"steps": 3},
                    "_meta": {"progressToken": 1},
                }
                async with http.stream(
                    "POST", keyed.url, json={**slow, "params": params}, headers=headers
                ) as r:
                    async for line in r.aiter_lines():  # the first progress: the call is upstream now
                        if "notifications/progress" in line:
                            in_flight.set()
                        first_lines.append(line)

            tg.start_soon(first)
            await in_flight.wait()
            params = {"name": "demo__echo", "arguments": {"text": "twin"}}
            second = await http.post(keyed.url, json={**slow, "params": params}, headers=headers)
            assert second.json()["error"]["code"] == -32600
            assert "already in flight" in second.json()["error"]["message"]
    assert '"result"' in [line for line in first_lines if line.startswith("data:")][-1]  # answered in full


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1"])
async def test_the_mcp_url_with_a_trailing_slash_never_redirects_to_the_host_header(
    keyed: RunningGateway, http: httpx2.AsyncClient, host: str
) -> None:
    _, key = await new_key(keyed)
    response = await http.post(
        f"{keyed.url}/", json=INIT, headers={**ACCEPT, "x-api-key": key, "host": host}, follow_redirects=False
    )
    assert "evil.example" not in response.headers.get("location", "")
    assert response.status_code in (200, 421), response.text


@pytest.mark.parametrize("client_info", [None, {"name": "no-version"}, ["not", "an", "object"]])
async def test_a_2026_host_without_usable_client_info_still_calls_tools(
    keyed: RunningGateway, http: httpx2.AsyncClient, client_info: Any
) -> None:
    """2026-07-28 makes `clientInfo` optional; the upstream's `initialize` (handshake era) needs one."""
    _, key = await new_key(keyed)
    meta: dict[str, Any] = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    if client_info is not None:
        meta["io.modelcontextprotocol/clientInfo"] = client_info
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "demo__echo", "arguments": {"text": "anonymous"}, "_meta": meta},
    }
    headers = {
        **ACCEPT,
        "x-api-key": key,
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "demo__echo",
    }
    with anyio.fail_after(TIMEOUT):
        response = await http.post(keyed.url, json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["result"]["content"][0]["text"] == "anonymous"
