"""Admins sign in to the console with their organisation's OpenID Connect provider, the way
they sign hosts in (issue 13): the real `oidc-provider` (tests/node), the gateway's shared
callback, and only a person the provider places among the organisation's admins gets in."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import anyio
import httpx2
import pytest

from gateway.signin.oidc import CALLBACK_PATH
from tests.api.console_client import csrf_of
from tests.gateway.signin.browser import TIMEOUT, SignInGateway, signin_gateway
from tests.harness import base_url_of, listening_socket
from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET, running_oidc_provider, sign_in_at

pytestmark = pytest.mark.usefixtures("node_modules")

ACCOUNTS: dict[str, dict[str, Any]] = {
    "alice": {"email": "alice@example.com", "email_verified": True, "groups": ["staff"]},
    "erin": {"email": "erin@example.com", "email_verified": True, "groups": ["staff", "mcpgw-admins"]},
}


@asynccontextmanager
async def console_oidc_gateway(directory: Path) -> AsyncIterator[SignInGateway]:
    """A gateway with host sign-in through a real provider (Corp SSO), whose admins are the
    people in its `mcpgw-admins` group."""
    sock = listening_socket()
    async with running_oidc_provider([base_url_of(sock) + CALLBACK_PATH], ACCOUNTS) as provider:
        oidc = (
            "  oidc:\n"
            "    - name: corp\n"
            "      display_name: Corp SSO\n"
            f"      issuer: {provider.issuer}\n"
            f"      client_id: {CLIENT_ID}\n"
            f"      client_secret: {CLIENT_SECRET}\n"
            "      scopes: [openid, email, profile, groups]\n"
            "      domains: {example.com: example-org}\n"
            "      admin_claim: groups\n"
            "      admin_values: [mcpgw-admins]\n"
        )
        async with signin_gateway(directory, oidc, sock) as running:
            yield running


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SignInGateway]:
    async with console_oidc_gateway(tmp_path_factory.mktemp("console-oidc")) as running:
        yield running


async def through_provider(
    gateway: SignInGateway, browser: httpx2.AsyncClient, login: str
) -> httpx2.Response:
    """Press "Sign in with Corp SSO" on the console's sign-in page, sign in at the provider as
    `login`, and return the gateway's answer to the provider's callback."""
    with anyio.fail_after(TIMEOUT):
        page = await browser.get(f"{gateway.base_url}/admin/signin")
        assert re.search(
            r'<button type="submit" name="provider" value="corp">Sign in with Corp SSO</button>', page.text
        )
        to_provider = await browser.post(
            f"{gateway.base_url}/admin/signin", data={"csrf": csrf_of(page.text), "provider": "corp"}
        )
        assert to_provider.status_code == 303, to_provider.text
        back = await sign_in_at(
            browser, to_provider.headers["location"], login, gateway.base_url + CALLBACK_PATH
        )
        return await browser.get(urljoin(str(back.url), back.headers["location"]))


async def test_an_admin_the_provider_vouches_for_signs_in_to_the_console(gateway: SignInGateway) -> None:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as browser:
        answer = await through_provider(gateway, browser, "erin")
        with anyio.fail_after(TIMEOUT):
            sessions = await browser.get(f"{gateway.base_url}/admin/sessions")
    assert answer.status_code == 200, answer.text
    assert "Signed in as erin@example.com" in answer.text
    assert '<meta http-equiv="refresh" content="0; url=/admin/sessions">' in answer.text
    cookie = answer.headers["set-cookie"]
    assert "mcpgw_console=" in cookie and "SameSite=strict" in cookie and "HttpOnly" in cookie
    assert sessions.status_code == 200 and "<h1>Sessions</h1>" in sessions.text
    assert "erin@example.com" in sessions.text  # who is signed in, in the header


async def test_a_person_who_is_not_an_admin_gets_a_403_page_and_no_console_session(
    gateway: SignInGateway,
) -> None:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as browser:
        answer = await through_provider(gateway, browser, "alice")
        with anyio.fail_after(TIMEOUT):
            sessions = await browser.get(f"{gateway.base_url}/admin/sessions")
    assert answer.status_code == 403
    assert "alice@example.com is not an admin" in answer.text
    assert "mcpgw_console=" not in answer.headers.get("set-cookie", "")
    assert sessions.status_code == 303 and sessions.headers["location"] == "/admin/signin"
