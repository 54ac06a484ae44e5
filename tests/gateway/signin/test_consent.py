"""Item 4 of issue 13: the consent page a person answers in their browser: it names the client
and where they go back to, takes a user-bound API key in the form body, refuses a form it did not
serve (CSRF), and a denial goes back to the host as access_denied."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest

from tests.gateway.signin.browser import (
    REDIRECT_URI,
    TIMEOUT,
    Browser,
    SignInGateway,
    authorize_params,
    create_key,
    pkce,
    register,
    signin_gateway,
)

_HIDDEN = re.compile(r'<input type="hidden" name="(request|csrf)" value="([^"]+)">')


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[SignInGateway]:
    async with signin_gateway(tmp_path) as running:
        yield running


async def open_consent(
    http: httpx2.AsyncClient, gateway: SignInGateway
) -> tuple[httpx2.Response, dict[str, str]]:
    client = await register(http, gateway.base_url, client_name="Claude <script>")
    authorize = await http.get(
        f"{gateway.base_url}/signin/authorize", params=authorize_params(client.client_id, pkce()[1])
    )
    assert authorize.status_code == 302
    page = await http.get(authorize.headers["location"])
    return page, dict(_HIDDEN.findall(page.text))


async def test_the_consent_page_names_the_client_and_its_redirect_host_and_runs_no_script(
    gateway: SignInGateway,
) -> None:
    async with httpx2.AsyncClient() as http:
        with anyio.fail_after(TIMEOUT):
            page, form = await open_consent(http, gateway)
    assert page.status_code == 200
    assert "Claude &lt;script&gt;" in page.text and "<script" not in page.text
    assert "127.0.0.1" in page.text
    assert 'method="post"' in page.text and 'type="password" id="api_key" name="api_key"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
    assert set(form) == {"request", "csrf"}


async def test_denying_sends_access_denied_back_to_the_host_with_its_state(gateway: SignInGateway) -> None:
    key = await create_key(gateway, "ada")
    async with httpx2.AsyncClient() as http:
        client = await register(http, gateway.base_url)
        browser = Browser(http, key, approve=False)
        url = httpx2.URL(
            f"{gateway.base_url}/signin/authorize", params=authorize_params(client.client_id, pkce()[1])
        )
        with anyio.fail_after(TIMEOUT):
            await browser.open(str(url))
    assert browser.received == [
        {
            "error": "access_denied",
            "error_description": "the person did not allow this sign-in",
            "state": "the-state",
            "iss": gateway.base_url,
        }
    ]


@pytest.mark.parametrize(
    ("user", "problem"),
    [(None, "not bound to a user"), ("wrong", "not valid")],
    ids=["a key bound to no user", "an unknown key"],
)
async def test_a_key_that_cannot_sign_in_is_refused_on_the_page_without_a_redirect(
    gateway: SignInGateway, user: str | None, problem: str
) -> None:
    key = "mgw_not-a-key" if user == "wrong" else await create_key(gateway, None)
    async with httpx2.AsyncClient() as http:
        with anyio.fail_after(TIMEOUT):
            _, form = await open_consent(http, gateway)
            answer = await http.post(
                f"{gateway.base_url}/signin/consent", data={**form, "decision": "approve", "api_key": key}
            )
    assert answer.status_code == 400 and "location" not in answer.headers
    assert problem in answer.text


async def test_a_form_posted_without_the_pages_cookie_is_refused(gateway: SignInGateway) -> None:
    key = await create_key(gateway, "ada")
    async with httpx2.AsyncClient() as http, httpx2.AsyncClient() as elsewhere:
        with anyio.fail_after(TIMEOUT):
            _, form = await open_consent(http, gateway)
            forged = await elsewhere.post(
                f"{gateway.base_url}/signin/consent", data={**form, "decision": "approve", "api_key": key}
            )
            # The person's own browser can still answer.
            real = await http.post(
                f"{gateway.base_url}/signin/consent", data={**form, "decision": "approve", "api_key": key}
            )
    assert forged.status_code == 403 and "location" not in forged.headers
    assert real.status_code == 303
    assert parse_qs(urlsplit(real.headers["location"]).query)["code"][0].startswith("mgc_")
    assert real.headers["location"].startswith(REDIRECT_URI)
    assert key not in real.headers["location"]


async def test_an_unknown_or_answered_consent_request_cannot_be_answered_again(
    gateway: SignInGateway,
) -> None:
    key = await create_key(gateway, "ada")
    async with httpx2.AsyncClient() as http:
        with anyio.fail_after(TIMEOUT):
            _, form = await open_consent(http, gateway)
            body = {**form, "decision": "approve", "api_key": key}
            first = await http.post(f"{gateway.base_url}/signin/consent", data=body)
            second = await http.post(f"{gateway.base_url}/signin/consent", data=body)
            unknown = await http.get(f"{gateway.base_url}/signin/consent", params={"request": "nope"})
    assert first.status_code == 303
    assert second.status_code == unknown.status_code == 400
    assert "expired" in second.text


async def test_a_csrf_token_that_is_not_ascii_is_refused_like_any_wrong_one(gateway: SignInGateway) -> None:
    # Found by the sign-in fuzzers (issue 23): hmac.compare_digest refuses to compare str that
    # is not ASCII, and the page answered 500.
    key = await create_key(gateway, "ada")
    async with httpx2.AsyncClient() as http:
        with anyio.fail_after(TIMEOUT):
            _, form = await open_consent(http, gateway)
            answer = await http.post(
                f"{gateway.base_url}/signin/consent",
                data={**form, "csrf": "\u0080é", "decision": "approve", "api_key": key},
            )
            real = await http.post(
                f"{gateway.base_url}/signin/consent", data={**form, "decision": "approve", "api_key": key}
            )
    assert answer.status_code == 403 and "location" not in answer.headers
    assert real.status_code == 303
