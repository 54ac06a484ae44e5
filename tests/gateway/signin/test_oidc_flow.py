"""A person signs in with their organisation's OpenID Connect provider on the consent page, and
the host then works as them: the MCP Python SDK's OAuth client against the real gateway, the
real `oidc-provider` (tests/node) as the organisation's provider, and the test as the browser
(the consent page's "Sign in with" button, the provider's login and consent forms, the way back)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult

from gateway.signin.consent import CONSENT_PATH
from gateway.signin.oidc import CALLBACK_PATH
from tests.gateway.signin.browser import (
    REDIRECT_URI,
    TIMEOUT,
    MemoryStorage,
    SignInGateway,
    authorize_params,
    oauth_client,
    pkce,
    register,
    signin_gateway,
)
from tests.harness import base_url_of, listening_socket
from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET, running_oidc_provider, sign_in_at

pytestmark = pytest.mark.usefixtures("node_modules")

ACCOUNTS: dict[str, dict[str, Any]] = {
    "alice": {"email": "alice@example.com", "email_verified": True, "name": "Alice"},
    "bob": {"email": "bob@elsewhere.org", "email_verified": True, "name": "Bob"},
}
_HIDDEN = re.compile(r'<input type="hidden" name="(request|csrf)" value="([^"]+)">')
_BUTTON = re.compile(r'<button type="submit" name="decision" value="(oidc:[a-z0-9-]+)">([^<]+)</button>')


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SignInGateway]:
    """A gateway whose consent page offers the organisation's provider (and API keys); one for
    the module, since each test signs in as a client of its own."""
    tmp_path = tmp_path_factory.mktemp("oidc-flow")
    sock = listening_socket()
    callback = base_url_of(sock) + CALLBACK_PATH
    async with running_oidc_provider([callback], ACCOUNTS) as provider:
        oidc = (
            "  oidc:\n"
            "    - name: corp\n"
            "      display_name: Corp SSO\n"
            f"      issuer: {provider.issuer}\n"
            f"      client_id: {CLIENT_ID}\n"
            f"      client_secret: {CLIENT_SECRET}\n"
            "      scopes: [openid, email, profile]\n"
            "      domains: {example.com: example-org}\n"
        )
        async with signin_gateway(tmp_path, oidc, sock) as running:
            yield running


@dataclass
class SsoBrowser:
    """A person's browser that answers the consent page with the provider's button and signs in
    there as `login`; keeps what the host's redirect URI received, or the page it stopped at."""

    http: httpx2.AsyncClient
    login: str
    received: list[dict[str, str]] = field(default_factory=list)
    stopped_at: list[httpx2.Response] = field(default_factory=list)

    async def open(self, authorization_url: str) -> None:
        with anyio.fail_after(TIMEOUT):
            authorize = await self.http.get(authorization_url)
            assert authorize.status_code == 302, authorize.text
            page = await self.http.get(authorize.headers["location"])
            assert page.status_code == 200, page.text
            [(decision, label)] = _BUTTON.findall(page.text)
            assert label == "Sign in with Corp SSO"
            gateway = urlsplit(authorization_url)._replace(path="", query="").geturl()
            to_provider = await self.http.post(
                gateway + CONSENT_PATH, data={**dict(_HIDDEN.findall(page.text)), "decision": decision}
            )
            assert to_provider.status_code == 303, to_provider.text
            back = await sign_in_at(
                self.http, to_provider.headers["location"], self.login, gateway + CALLBACK_PATH
            )
            answer = await self.http.get(urljoin(str(back.url), back.headers["location"]))
        if answer.status_code != 303:
            self.stopped_at.append(answer)
            return
        location = answer.headers["location"]
        assert location.startswith(REDIRECT_URI + "?"), location
        self.received.append({k: v[0] for k, v in parse_qs(urlsplit(location).query).items()})

    async def callback(self) -> AuthorizationCodeResult:
        got = self.received[-1]
        return AuthorizationCodeResult(code=got.get("code", ""), state=got.get("state"), iss=got.get("iss"))


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_a_person_signs_in_with_the_organisations_provider_and_the_host_works_as_them(
    gateway: SignInGateway, mode: str
) -> None:
    storage = MemoryStorage()
    async with httpx2.AsyncClient(follow_redirects=False, timeout=TIMEOUT) as browser_http:
        browser = SsoBrowser(browser_http, "alice")
        async with (
            httpx2.AsyncClient(auth=oauth_client(gateway.url, browser, storage), timeout=TIMEOUT) as http,
            Client(streamable_http_client(gateway.url, http_client=http), mode=mode) as client,
        ):
            with anyio.fail_after(TIMEOUT):
                tools = await client.list_tools()
                result = await client.call_tool("demo__echo", {"text": "signed in with SSO"})
    assert "demo__echo" in {tool.name for tool in tools.tools}
    assert result.content[0].model_dump()["text"] == "signed in with SSO"
    assert browser.received[0]["iss"] == gateway.base_url
    # The first sign-in made the person a user of the organisation their domain maps to, and the
    # session is recorded as theirs.
    store = gateway.running.gateway.store
    organisation = await store.ensure_organisation("example-org")
    [identity] = await store.live_api_keys(organisation.id, user_id="alice@example.com")
    async with httpx2.AsyncClient() as plain:
        root = await store.create_api_key(organisation.id, user_id="root", is_admin=True)
        listing = await plain.get(
            f"{gateway.base_url}/mcp/{organisation.id}/sessions", headers={"x-api-key": root.secret}
        )
    assert listing.status_code == 200, listing.text
    sessions = listing.json()["data"]
    assert sessions and {s["apiKeyId"] for s in sessions} == {identity.id}
    assert sessions[0]["callCount"] == 1  # the newest: this test's


async def test_a_person_the_provider_places_in_no_organisation_is_refused_and_the_host_gets_no_code(
    gateway: SignInGateway,
) -> None:
    async with httpx2.AsyncClient(follow_redirects=False, timeout=TIMEOUT) as http:
        client = await register(http, gateway.base_url)
        _, challenge = pkce()
        browser = SsoBrowser(http, "bob")
        await browser.open(
            str(
                httpx2.URL(
                    f"{gateway.base_url}/signin/authorize",
                    params=authorize_params(client.client_id, challenge),
                )
            )
        )
    assert browser.received == []
    [page] = browser.stopped_at
    assert page.status_code == 403
    assert "elsewhere.org" in page.text and "location" not in page.headers


async def test_the_providers_button_needs_the_consent_pages_csrf_token(gateway: SignInGateway) -> None:
    """Whoever starts an authorization request knows its id; without the page's cookie, a POST
    of the provider's button must not send a person to their provider (where a live session
    would sign them in for that request without their seeing it)."""
    async with httpx2.AsyncClient(follow_redirects=False, timeout=TIMEOUT) as attacker:
        client = await register(attacker, gateway.base_url)
        _, challenge = pkce()
        authorize = await attacker.get(
            f"{gateway.base_url}/signin/authorize", params=authorize_params(client.client_id, challenge)
        )
        page = await attacker.get(authorize.headers["location"])
        fields = dict(_HIDDEN.findall(page.text))
    async with httpx2.AsyncClient(follow_redirects=False, timeout=TIMEOUT) as victim:
        answer = await victim.post(gateway.base_url + CONSENT_PATH, data={**fields, "decision": "oidc:corp"})
    assert answer.status_code == 403 and "location" not in answer.headers
