"""A host signs in to the gateway the way claude.ai-style hosts do, driven by the MCP Python SDK's
own OAuth client against the real gateway on 127.0.0.1: discovery from the 401, registration,
authorize, the consent page completed as a browser would, token, calls, refresh, revocation."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.gateway.signin.browser import (
    TIMEOUT,
    Browser,
    MemoryStorage,
    SignInGateway,
    authorize_params,
    create_key,
    oauth_client,
    pkce,
    redeem,
    register,
    sign_in,
    signin_gateway,
)


@pytest.fixture
async def gateway(tmp_path: Path) -> Any:
    async with signin_gateway(tmp_path) as running:
        yield running


async def sessions_of(gateway: SignInGateway, admin_key: str) -> list[dict[str, Any]]:
    async with httpx2.AsyncClient(headers={"x-api-key": admin_key}) as http:
        organisation = gateway.running.gateway.store
        org = await organisation.ensure_organisation("default")
        listing = await http.get(f"{gateway.base_url}/mcp/{org.id}/sessions")
    assert listing.status_code == 200, listing.text
    sessions: list[dict[str, Any]] = listing.json()["data"]
    return sessions


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_a_host_signs_in_with_a_user_key_and_its_calls_are_recorded_under_its_client(
    gateway: SignInGateway, mode: str
) -> None:
    key = await create_key(gateway, "ada")
    admin = await create_key(gateway, "root", admin=True)
    storage = MemoryStorage()
    async with httpx2.AsyncClient(follow_redirects=False) as browser_http:
        browser = Browser(browser_http, key)
        auth = oauth_client(gateway.url, browser, storage)
        async with (
            httpx2.AsyncClient(auth=auth, timeout=TIMEOUT) as http,
            Client(streamable_http_client(gateway.url, http_client=http), mode=mode) as client,
        ):
            with anyio.fail_after(TIMEOUT):
                tools = await client.list_tools()
                result = await client.call_tool("demo__echo", {"text": "signed in"})
    assert "demo__echo" in {tool.name for tool in tools.tools}
    assert result.content[0].model_dump()["text"] == "signed in"
    # The person saw who asked and where they go back to; the host got a code with iss and state.
    assert "Signed-in test host" in browser.pages[0] and "127.0.0.1" in browser.pages[0]
    assert browser.received[0]["iss"] == gateway.base_url and browser.received[0]["state"]
    assert storage.tokens is not None and storage.tokens.access_token.startswith("mga_")
    assert storage.client_info is not None
    sessions = await sessions_of(gateway, admin)
    signed_in = [s for s in sessions if s["clientName"] != "t"]
    registered = await gateway.running.gateway.store.signin.client(storage.client_info.client_id)
    assert registered is not None
    assert [s["clientId"] for s in signed_in] == [registered.id]
    assert signed_in[0]["callCount"] >= 1


async def test_a_signed_in_host_refreshes_an_expired_token_and_a_revoked_one_signs_in_again(
    tmp_path: Path,
) -> None:
    async with signin_gateway(tmp_path, "  access_token_ttl_s: 1\n") as gateway:
        key = await create_key(gateway, "ada")
        storage = MemoryStorage()
        async with httpx2.AsyncClient(follow_redirects=False) as browser_http:
            browser = Browser(browser_http, key)
            auth = oauth_client(gateway.url, browser, storage)
            async with httpx2.AsyncClient(auth=auth, timeout=TIMEOUT) as http:
                async with Client(
                    streamable_http_client(gateway.url, http_client=http), mode="2026-07-28"
                ) as c:
                    with anyio.fail_after(TIMEOUT):
                        await c.call_tool("demo__echo", {"text": "first"})
                assert storage.tokens is not None
                first = storage.tokens
                # The token expires; the SDK client sees so from expires_in and refreshes first.
                auth.context.token_expiry_time = 1.0  # the epoch: long past
                async with Client(
                    streamable_http_client(gateway.url, http_client=http), mode="2026-07-28"
                ) as c:
                    with anyio.fail_after(TIMEOUT):
                        await c.call_tool("demo__echo", {"text": "refreshed"})
                second = storage.tokens
                assert second.access_token != first.access_token
                assert second.refresh_token != first.refresh_token
                assert len(browser.received) == 1  # no second visit to the consent page
                # RFC 7009: the host revokes; the token stops working on the very next request.
                metadata = (
                    await http.get(f"{gateway.base_url}/.well-known/oauth-authorization-server")
                ).json()
                assert storage.client_info is not None
                client = storage.client_info
                assert client.client_secret is not None  # the SDK client registers a confidential one
            async with httpx2.AsyncClient(timeout=TIMEOUT) as plain:
                revoked = await plain.post(
                    metadata["revocation_endpoint"],
                    data={
                        "token": second.refresh_token,
                        "client_id": client.client_id,
                        "client_secret": client.client_secret,
                    },
                )
                assert revoked.status_code == 200
                refused = await plain.post(
                    gateway.url,
                    json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                    headers={"authorization": f"Bearer {second.access_token}", "accept": "application/json"},
                )
            assert refused.status_code == 401
            assert 'error="invalid_token"' in refused.headers["www-authenticate"]


async def test_no_token_code_secret_or_verifier_reaches_the_gateways_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with signin_gateway(tmp_path) as gateway, httpx2.AsyncClient() as http:
        key = await create_key(gateway, "ada")
        with anyio.fail_after(TIMEOUT):
            client = await register(http, gateway.base_url, token_endpoint_auth_method="client_secret_post")
            code, verifier = await sign_in(http, gateway.base_url, client.client_id, key)
            tokens = (await redeem(http, gateway.base_url, client, code, verifier)).json()
            replayed = await redeem(http, gateway.base_url, client, code, verifier)
            refreshed = await http.post(
                f"{gateway.base_url}/signin/token",
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": tokens["refresh_token"],
                    "client_id": client.client_id,
                    "client_secret": client.client_secret or "",
                },
            )
    assert replayed.status_code == 400 and refreshed.status_code == 400  # the replay revoked the grant
    secrets = [
        key,
        code,
        verifier,
        tokens["access_token"],
        tokens["refresh_token"],
        client.client_secret or key,
    ]
    ours = [
        r for r in caplog.records if r.name.split(".")[0] in ("gateway", "store", "api", "mcp", "uvicorn")
    ]
    assert ours  # the gateway did log (sign-ins, registrations)
    for record in ours:
        text = record.getMessage()
        assert not any(secret in text for secret in secrets), record.name


async def test_a_host_signs_in_to_an_organisations_own_mcp_url_only_with_a_key_of_that_organisation(
    gateway: SignInGateway,
) -> None:
    org = await gateway.running.gateway.store.ensure_organisation("default")
    url = f"{gateway.url}/{org.id}"
    outsider = await create_key(gateway, "eve", organisation="other")
    key = await create_key(gateway, "ada")
    async with httpx2.AsyncClient(follow_redirects=False) as browser_http:
        with anyio.fail_after(TIMEOUT):
            registered = await register(browser_http, gateway.base_url)
            params = authorize_params(registered.client_id, pkce()[1], resource=url)
            authorize = await browser_http.get(f"{gateway.base_url}/signin/authorize", params=params)
            page = await browser_http.get(authorize.headers["location"])
            form = dict(re.findall(r'<input type="hidden" name="(request|csrf)" value="([^"]+)">', page.text))
            refused = await browser_http.post(
                f"{gateway.base_url}/signin/consent",
                data={**form, "decision": "approve", "api_key": outsider},
            )
        assert refused.status_code == 400 and "location" not in refused.headers
        assert "another organisation" in refused.text
        browser = Browser(browser_http, key)
        storage = MemoryStorage()
        async with (
            httpx2.AsyncClient(auth=oauth_client(url, browser, storage), timeout=TIMEOUT) as http,
            Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
        ):
            with anyio.fail_after(TIMEOUT):
                result = await client.call_tool("demo__echo", {"text": "scoped"})
    assert result.content[0].model_dump()["text"] == "scoped"
    grants = await gateway.running.gateway.store.signin.grants(org.id)
    assert [g.resource for g in grants] == [url]
