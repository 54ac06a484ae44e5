"""API keys keep working on the MCP endpoint when host sign-in is on (issue 23, defect 1), and
every refusal says what is wrong with the credential (defect 8).

Sign-in adds a way in for hosts that can only do OAuth (claude.ai, ChatGPT); it must never take
one away from the hosts that send a key (Cursor, Claude Code, VS Code). Each case is the request
such a host sends: its key as `x-api-key` or as a bearer token, to `/mcp` or to its
organisation's `/mcp/{organisationId}`, opening a session (2025-11-25) or sending a
self-contained 2026-07-28 request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from store import open_sqlite_store
from tests.gateway.host.test_stateless import envelope, routing_headers
from tests.gateway.signin.browser import SignInGateway, redeem, register, sign_in, signin_gateway
from tests.harness import RunningGateway, demo_stdio_yaml, serve_gateway, write_config

TIMEOUT = 20.0
HANDSHAKE = "2025-11-25"


@dataclass
class Keyed:
    """A gateway and keys of organisation `acme`: one bound to a user, one not."""

    base_url: str
    database: Path
    organisation_id: str
    user_key: str
    plain_key: str
    revoked_key: str
    sign_in: bool


async def _keys(database: Path) -> tuple[str, str, str, str]:
    async with open_sqlite_store(database) as store:
        org = await store.ensure_organisation("acme")
        user_key = await store.create_api_key(org.id, user_id="ada")
        plain_key = await store.create_api_key(org.id)
        revoked = await store.create_api_key(org.id)
        await store.revoke_api_key(revoked.key.id)
    return org.id, user_key.secret, plain_key.secret, revoked.secret


@pytest.fixture(scope="module")
async def signed_in_gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SignInGateway]:
    async with signin_gateway(tmp_path_factory.mktemp("signin-on")) as gateway:
        yield gateway


@pytest.fixture(scope="module")
async def key_only_gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    config = write_config(
        tmp_path_factory.mktemp("signin-off"),
        f"database: ./gw.db\nauth: {{required: true}}\nupstreams:{demo_stdio_yaml()}\n",
    )
    async with serve_gateway(config) as running:
        yield running


@pytest.fixture(params=["sign-in on", "sign-in off"])
async def keyed(
    request: pytest.FixtureRequest, signed_in_gateway: SignInGateway, key_only_gateway: RunningGateway
) -> Keyed:
    on = request.param == "sign-in on"
    running = signed_in_gateway.running if on else key_only_gateway
    database = Path(running.gateway.config.database)
    organisation_id, user_key, plain_key, revoked_key = await _keys(database)
    return Keyed(
        running.url.removesuffix("/mcp"), database, organisation_id, user_key, plain_key, revoked_key, on
    )


def _credential(header: str, key: str) -> dict[str, str]:
    return {"x-api-key": key} if header == "x-api-key" else {"authorization": f"Bearer {key}"}


async def _handshake_tools(http: httpx2.AsyncClient, url: str, credential: dict[str, str]) -> list[str]:
    """Open a session as a 2025-11-25 host does and list its tools."""
    headers = {"accept": "application/json, text/event-stream", **credential}
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": HANDSHAKE,
            "capabilities": {},
            "clientInfo": {"name": "cursor", "version": "1"},
        },
    }
    opened = await http.post(url, json=initialize, headers=headers)
    assert opened.status_code == 200, opened.text
    session = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": HANDSHAKE}
    await http.post(
        url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers={**headers, **session}
    )
    listed = await http.post(
        url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers={**headers, **session}
    )
    assert listed.status_code == 200, listed.text
    await http.delete(url, headers={**headers, **session})
    return [tool["name"] for tool in _answer(listed)["result"]["tools"]]


async def _modern_tools(http: httpx2.AsyncClient, url: str, credential: dict[str, str]) -> list[str]:
    """A self-contained 2026-07-28 `tools/list`."""
    message = envelope("tools/list", client="claude-code")
    listed = await http.post(url, json=message, headers={**routing_headers(message), **credential})
    assert listed.status_code == 200, listed.text
    return [tool["name"] for tool in _answer(listed)["result"]["tools"]]


def _answer(response: httpx2.Response) -> dict[str, Any]:
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [
            line.removeprefix("data:").strip()
            for line in response.text.splitlines()
            if line.startswith("data:")
        ]
        found: dict[str, Any] = httpx2.Response(200, content=data[-1]).json()
        return found
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
@pytest.mark.parametrize("generation", ["2025-11-25", "2026-07-28"])
@pytest.mark.parametrize("path", ["/mcp", "/mcp/{organisation}"])
@pytest.mark.parametrize("bound", ["user key", "key without user"])
async def test_an_api_key_opens_the_mcp_endpoint_whether_or_not_sign_in_is_on(
    keyed: Keyed, header: str, generation: str, path: str, bound: str
) -> None:
    key = keyed.user_key if bound == "user key" else keyed.plain_key
    url = keyed.base_url + path.format(organisation=keyed.organisation_id)
    list_tools = _handshake_tools if generation == HANDSHAKE else _modern_tools
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        with anyio.fail_after(TIMEOUT):
            tools = await list_tools(http, url, _credential(header, key))
    assert "demo__echo" in tools


async def _refusal(url: str, credential: dict[str, str]) -> tuple[int, str, str]:
    """A 2026-07-28 `tools/list` with `credential`: (status, the error's message, WWW-Authenticate)."""
    message = envelope("tools/list", client="claude-code")
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        with anyio.fail_after(TIMEOUT):
            answer = await http.post(url, json=message, headers={**routing_headers(message), **credential})
    return answer.status_code, answer.json()["error"]["message"], answer.headers.get("www-authenticate", "")


@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
async def test_a_mistyped_key_is_called_unknown_and_a_revoked_key_revoked(keyed: Keyed, header: str) -> None:
    url = f"{keyed.base_url}/mcp"
    status, message, challenge = await _refusal(url, _credential(header, keyed.user_key[:-2] + "xx"))
    assert status == 401
    assert "unknown API key" in message
    assert "revoked" not in message
    status, message, challenge = await _refusal(url, _credential(header, keyed.revoked_key))
    assert status == 401
    assert "API key was revoked" in message
    if keyed.sign_in:
        assert 'error="invalid_token"' in challenge


async def test_a_key_of_another_organisation_is_not_found_on_its_url(keyed: Keyed) -> None:
    """A tenant learns nothing of another: a valid key on another organisation's URL is a 404,
    and a revoked key of that organisation says nothing of whose it was."""
    async with open_sqlite_store(keyed.database) as store:
        other = await store.ensure_organisation("globex")
        outsider = await store.create_api_key(other.id)
    status, message, _ = await _refusal(
        f"{keyed.base_url}/mcp/{keyed.organisation_id}", {"x-api-key": outsider.secret}
    )
    assert (status, message) == (404, "Not Found")
    status, message, _ = await _refusal(f"{keyed.base_url}/mcp/{other.id}", {"x-api-key": keyed.revoked_key})
    assert status == 401
    assert other.id not in message and "globex" not in message


async def test_an_access_token_is_refused_for_another_mcp_url_and_where_sign_in_is_off(
    signed_in_gateway: SignInGateway, key_only_gateway: RunningGateway
) -> None:
    """A token issued for `/mcp` is not a credential for an organisation's URL (RFC 8707), and
    each refusal says so rather than calling the token unknown."""
    database = Path(signed_in_gateway.running.gateway.config.database)
    _, user_key, _, _ = await _keys(database)
    base = signed_in_gateway.base_url
    async with httpx2.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as http:
        with anyio.fail_after(TIMEOUT):
            client = await register(http, base)
            code, verifier = await sign_in(http, base, client.client_id, user_key)
            tokens = (await redeem(http, base, client, code, verifier)).json()
    bearer = {"authorization": f"Bearer {tokens['access_token']}"}
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        with anyio.fail_after(TIMEOUT):
            assert "demo__echo" in await _modern_tools(http, f"{base}/mcp", bearer)  # where it was issued
    async with open_sqlite_store(database) as store:
        org = await store.ensure_organisation("acme")
    status, message, challenge = await _refusal(f"{base}/mcp/{org.id}", bearer)
    assert status == 401
    assert "issued for another MCP URL" in message
    assert 'error="invalid_token"' in challenge
    status, message, _ = await _refusal(f"{base}/mcp/{org.id}", {"authorization": "Bearer mga_" + "x" * 40})
    assert (status, "unknown access token" in message) == (401, True)
    status, message, _ = await _refusal(key_only_gateway.url, bearer)
    assert status == 401
    assert "access tokens are not accepted" in message
