"""The admin console in a real headless browser (chromium, driven by playwright-core, with
JavaScript off: the console needs none): an admin signs in, finds a user's session and reads a
call's arguments, revokes a key and its next MCP request is refused, re-authorises a
`needs_reauth` credential, and a POST without the CSRF token is refused. The sessions and
timeline pages the browser shows are kept as `docs/console-*.png`."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx2
import pytest

from tests.api.conftest import ACCEPT, TIMEOUT, McpClient, new_tenant
from tests.api.test_console_oidc import console_oidc_gateway
from tests.browser import BrowserUnavailable, chromium_path
from tests.connecting import connect_url, people, serve_gateway_at_own_url
from tests.gateway.credentials.test_oauth_upstream import World, authorise, rows
from tests.harness import ROOT, RunningGateway
from tests.node import run_node
from tests.oauth import running_auth_server, serve_protected_upstream

Browse = Callable[..., Awaitable[dict[str, Any]]]
BROWSER_TIMEOUT = 60.0  # a scenario is several page loads in chromium on a busy 2-core machine
SCREENSHOTS = "MCPGW_SCREENSHOTS"
"""Set (to anything) to keep the screenshots in `docs/` (the README shows them) rather than
in the test's temporary directory."""


@pytest.fixture(scope="module")
async def browse(node_modules: None) -> AsyncIterator[Browse]:
    """Run a scenario of `tests/node/console_browser.mjs` in one chromium shared by the module."""
    try:
        chromium = await anyio.to_thread.run_sync(chromium_path)
    except BrowserUnavailable as exc:
        pytest.skip(str(exc))
    async with (
        run_node("console_browser.mjs", env={"CHROMIUM": chromium}) as program,
        httpx2.AsyncClient(timeout=BROWSER_TIMEOUT) as http,
    ):
        url = f"http://127.0.0.1:{program.ready['port']}/"

        async def run(scenario: str, **plan: Any) -> dict[str, Any]:
            with anyio.fail_after(BROWSER_TIMEOUT):
                answer = await http.post(url, json={"scenario": scenario, **plan})
            assert answer.status_code == 200, answer.text
            found: dict[str, Any] = answer.json()
            return found

        yield run


async def test_an_admin_signs_in_in_the_browser_and_lands_on_the_sessions(
    keyed: RunningGateway, browse: Browse
) -> None:
    admin = await new_tenant(keyed, "browser-signin", admin=True)
    seen = await browse("signin", base=keyed.base_url, key=admin.key)
    assert seen["url"] == f"{keyed.base_url}/admin/sessions" and seen["heading"] == "Sessions"
    assert seen["cookie"] == {"httpOnly": True, "sameSite": "Strict", "path": "/admin"}


async def test_an_admin_finds_a_users_session_and_reads_a_calls_arguments(
    keyed: RunningGateway, browse: Browse, http: httpx2.AsyncClient, tmp_path: Path
) -> None:
    shots = ROOT / "docs" if os.environ.get(SCREENSHOTS) else tmp_path
    admin = await new_tenant(keyed, "browser-find", admin=True)
    store = keyed.gateway.store
    alice = await store.create_api_key(admin.organisation_id, user_id="alice")
    bob = await store.create_api_key(admin.organisation_id, user_id="bob")
    with anyio.fail_after(TIMEOUT):
        for created, text in ((bob, "from bob"), (alice, "hello from alice")):
            mcp = McpClient(http, keyed.url, created.secret)
            session = await mcp.open(name="Claude Code", version="2.1.0")
            await mcp.call(session, "demo__echo", {"text": text})
            await mcp.call(session, "demo__structured", {"a": 6, "b": 7})
            await mcp.call(session, "demo__fail", {"message": "the disk is full"})
    seen = await browse(
        "find_session",
        base=keyed.base_url,
        key=admin.key,
        user="alice",
        tool="demo__echo",
        screenshots=str(shots),
    )
    [row] = seen["rows"]
    assert row[1] == "alice" and row[3] == "Claude Code 2.1.0" and row[5] == "3"
    assert seen["hiddenBefore"] and seen["visible"]  # collapsed until the admin opens the call
    assert seen["argumentsText"] == '{\n  "text": "hello from alice"\n}'
    assert (shots / "console-sessions.png").stat().st_size > 0
    assert (shots / "console-timeline.png").stat().st_size > 0


async def test_a_key_revoked_in_the_browser_is_refused_on_its_next_mcp_request(
    keyed: RunningGateway, browse: Browse, http: httpx2.AsyncClient
) -> None:
    admin = await new_tenant(keyed, "browser-revoke", admin=True)
    created = await keyed.gateway.store.create_api_key(admin.organisation_id, user_id="leaky")
    mcp = McpClient(http, keyed.url, created.secret)
    with anyio.fail_after(TIMEOUT):
        session = await mcp.open()
        await mcp.call(session, "demo__echo", {"text": "before"})  # the gateway holds the key now
    seen = await browse("revoke_key", base=keyed.base_url, key=admin.key, keyId=created.key.id)
    with anyio.fail_after(TIMEOUT):
        refused = await http.post(
            keyed.url,
            json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"},
            headers={**ACCEPT, "x-api-key": created.secret, "mcp-session-id": session},
        )
    assert seen["question"].startswith(f"Revoke API key {created.key.prefix}")
    assert "revoked" in seen["row"][-1]
    assert refused.status_code == 401


async def test_a_post_without_the_csrf_token_is_refused_in_the_browser(
    keyed: RunningGateway, browse: Browse
) -> None:
    admin = await new_tenant(keyed, "browser-csrf", admin=True)
    target = await keyed.gateway.store.create_api_key(admin.organisation_id)
    seen = await browse("csrf", base=keyed.base_url, key=admin.key, keyId=target.key.id)
    assert (seen["bare"], seen["forged"]) == (403, 403)
    assert seen["row"][-1] == "Revoke…"  # still live
    assert await keyed.gateway.store.live_api_keys(admin.organisation_id, api_key_id=target.key.id)


@pytest.fixture
async def world(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[World]:
    """A gateway in front of an upstream that takes per-user OAuth from a real authorization
    server (as in `tests/gateway/credentials/test_oauth_upstream.py`)."""
    caplog.set_level(logging.INFO)
    async with (
        running_auth_server() as auth,
        serve_protected_upstream(auth) as upstream,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
    ):
        body = f"""
auth: {{required: true}}
upstreams:
  - name: gh
    transport: http
    url: {upstream.url}
    auth: {{kind: oauth, identity: user, scopes: [read]}}
"""
        async with serve_gateway_at_own_url(tmp_path, body) as gateway:
            users = await people(gateway, http)
            yield World(gateway, auth, upstream, http, users.alice, users.bob, users.admin, {}, tmp_path)


async def test_an_admin_reauthorises_a_needs_reauth_credential_in_the_browser(
    world: World, browse: Browse
) -> None:
    with anyio.fail_after(TIMEOUT):
        session = await world.alice.open()
        await authorise(
            world, connect_url(await world.alice.call(session, "gh__whoami", {})), "alice@example"
        )
        world.auth.revoke_refresh_tokens()
        world.auth.expire_access_tokens()
        connect_url(await world.alice.call(session, "gh__whoami", {}))  # the refresh is refused
        [row] = await rows(world)
    assert row["status"] == "needs_reauth"
    admin_key = world.admin["authorization"].removeprefix("Bearer ")
    seen = await browse("reauth", base=world.gateway.base_url, key=admin_key, credentialId=row["id"])
    assert seen["status"] == "needs_reauth" and seen["heading"] == "Re-authorise"
    with anyio.fail_after(TIMEOUT):
        assert (await authorise(world, seen["link"], "alice@example")).status_code == 200
        assert [r["status"] for r in await rows(world)] == ["active"]


async def test_an_admin_signs_in_with_the_organisations_provider_in_the_browser(
    browse: Browse, tmp_path: Path
) -> None:
    async with console_oidc_gateway(tmp_path) as gateway:
        admin = await browse("provider_signin", base=gateway.base_url, label="Corp SSO", login="erin")
        other = await browse("provider_signin", base=gateway.base_url, label="Corp SSO", login="alice")
    assert admin["url"] == f"{gateway.base_url}/admin/sessions" and admin["heading"] == "Sessions"
    assert other["heading"] == "Not an admin" and "alice@example.com is not an admin" in other["text"]
