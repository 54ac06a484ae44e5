"""The TypeScript SDK's own client signs in to the gateway: `tests/node/mcp_client.mjs` is an MCP
host built on `@modelcontextprotocol/sdk` with the SDK's OAuth client, driven by this test over
its stdin and stdout. The test plays the person's browser on the consent page (with a key bound
to them) whenever the SDK sends them there; everything else is the SDK's own doing: discovery
from the 401, dynamic registration, PKCE, the token request, refreshing a token the gateway no
longer accepts, and signing in again once the grant was revoked."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import httpx2
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from tests.gateway.signin.browser import (
    REDIRECT_URI,
    TIMEOUT,
    Browser,
    SignInGateway,
    create_key,
    signin_gateway,
)
from tests.node import run_node

pytestmark = pytest.mark.usefixtures("node_modules")


class TypeScriptHost:
    """The Node host: one command in, events out, each read with a deadline."""

    def __init__(self, process: Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self._process = process
        self._lines = TextReceiveStream(process.stdout)
        self._buffered = ""

    async def send(self, **command: Any) -> None:
        assert self._process.stdin is not None
        await self._process.stdin.send((json.dumps(command) + "\n").encode())

    async def event(self) -> dict[str, Any]:
        with anyio.fail_after(TIMEOUT):
            while "\n" not in self._buffered:
                self._buffered += await self._lines.receive()
        line, self._buffered = self._buffered.split("\n", 1)
        event: dict[str, Any] = json.loads(line)
        return event

    async def ask(self, **command: Any) -> dict[str, Any]:
        await self.send(**command)
        return await self.event()


@asynccontextmanager
async def typescript_host(gateway: SignInGateway) -> AsyncIterator[TypeScriptHost]:
    options = json.dumps({"url": gateway.url, "redirectUrl": REDIRECT_URI})
    async with run_node("mcp_client.mjs", options) as program:
        yield TypeScriptHost(program.process)


async def consent(browser: Browser, host: TypeScriptHost, asked: dict[str, Any]) -> dict[str, Any]:
    """The person approves where the SDK sent them; the SDK gets the redirect and goes on."""
    assert asked["event"] == "authorize", asked
    await browser.open(asked["url"])
    return await host.ask(op="callback", url=f"{REDIRECT_URI}?{urlencode(browser.received[-1])}")


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[SignInGateway]:
    async with signin_gateway(tmp_path) as running:
        yield running


async def test_the_typescript_sdk_signs_in_calls_refreshes_and_signs_in_again_after_revocation(
    gateway: SignInGateway,
) -> None:
    key = await create_key(gateway, "grace")
    store = gateway.running.gateway.store
    async with (
        httpx2.AsyncClient(follow_redirects=False, timeout=TIMEOUT) as http,
        typescript_host(gateway) as host,
    ):
        browser = Browser(http, key)
        connected = await consent(browser, host, await host.ask(op="connect"))
        assert connected["event"] == "connected", connected
        assert "Signed-in test host" not in browser.pages[0]  # the page names this client instead
        assert "mcpgw TypeScript SDK test host" in browser.pages[0]

        listed = await host.ask(op="list_tools")
        assert "demo__echo" in listed["names"], listed
        called = await host.ask(op="call", name="demo__echo", arguments={"text": "from TypeScript"})
        assert called["result"]["content"][0]["text"] == "from TypeScript", called

        first = await host.ask(op="tokens")
        assert first["tokens"]["access_token"].startswith("mga_")
        registered = await store.signin.client(first["client"]["client_id"])
        assert registered is not None  # the SDK registered itself (RFC 7591)

        # A token the gateway no longer takes: the SDK refreshes it by itself and goes on, with no
        # second visit to the consent page.
        assert (await host.ask(op="spoil"))["event"] == "spoiled"
        again = await host.ask(op="call", name="demo__echo", arguments={"text": "refreshed"})
        assert again["event"] == "result", again
        refreshed = await host.ask(op="tokens")
        assert refreshed["tokens"]["refresh_token"] != first["tokens"]["refresh_token"]
        assert refreshed["authorizations"] == 1

        # The host's sign-in is revoked (RFC 7009): its next request sends the person back to the
        # consent page, and once they approve, the call goes through.
        client = first["client"]
        revoked = await http.post(
            f"{gateway.base_url}/signin/revoke",
            data={
                "token": refreshed["tokens"]["refresh_token"],
                "client_id": client["client_id"],
                **({"client_secret": client["client_secret"]} if client.get("client_secret") else {}),
            },
        )
        assert revoked.status_code == 200, revoked.text
        await host.send(op="call", name="demo__echo", arguments={"text": "after revocation"})
        after = await consent(browser, host, await host.event())
        assert after["event"] == "result", after
        assert after["result"]["content"][0]["text"] == "after revocation"
        assert (await host.ask(op="tokens"))["authorizations"] == 2
        assert (await host.ask(op="close"))["event"] == "closed"

    # Every call was recorded, in sessions that name the client the SDK registered.
    admin = await create_key(gateway, "root", admin=True)
    organisation = await store.ensure_organisation("default")
    async with httpx2.AsyncClient(headers={"x-api-key": admin}, timeout=TIMEOUT) as api:
        listing = await api.get(f"{gateway.base_url}/mcp/{organisation.id}/sessions")
    assert listing.status_code == 200, listing.text
    sessions = listing.json()["data"]
    assert {s["clientId"] for s in sessions} == {registered.id}
    assert sum(s["callCount"] for s in sessions) == 3
