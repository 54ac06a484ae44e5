"""A real OpenID Connect provider for the tests, and a browser that signs in at it.

`running_oidc_provider` starts `tests/node/oidc_provider.mjs` (the certified `oidc-provider`
package) on a loopback port with one confidential client and the given accounts; each instance
signs with a key of its own. `sign_in_at` walks its pages as a browser does: the authorization
URL, the login form (the login is the account's `sub`; any password), the consent form, and
returns the redirect back to the relying party, unfollowed. `abort_at` takes the login page's
"Cancel" link instead (the provider answers `access_denied`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import anyio
import httpx2

from tests.node import run_node

CLIENT_ID = "mcpgw"
CLIENT_SECRET = "mcpgw-client-s3cret-for-the-tests-only"
_MAX_STEPS = 12  # redirects and forms before the provider must have answered


@dataclass(frozen=True, slots=True)
class RunningProvider:
    issuer: str
    port: int


@asynccontextmanager
async def running_oidc_provider(
    redirect_uris: list[str],
    accounts: Mapping[str, Mapping[str, Any]],
    *,
    issuer: str | None = None,
    port: int = 0,
) -> AsyncIterator[RunningProvider]:
    """The provider, until the block ends; `port` 0 is an ephemeral one. Started again on the
    port of one that ended, it is the same issuer with a new signing key (a key rotation)."""
    options: dict[str, Any] = {
        "port": port,
        "clients": [{"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": redirect_uris}],
        "accounts": accounts,
    }
    if issuer is not None:
        options["issuer"] = issuer
    async with run_node("oidc_provider.mjs", json.dumps(options)) as program:
        yield RunningProvider(issuer=program.ready["issuer"], port=program.ready["port"])


class _Page(HTMLParser):
    """The first form of a page (its action and inputs) and its links."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form" and self.action is None:
            self.action = attributes.get("action", "")
        elif tag == "input" and "name" in attributes:
            self.fields.setdefault(attributes["name"], attributes.get("value", ""))
        elif tag == "a" and "href" in attributes:
            self.links.append(attributes["href"])


async def sign_in_at(browser: httpx2.AsyncClient, url: str, login: str, back_to: str) -> httpx2.Response:
    """Open `url` (an authorization request), sign in as `login`, consent, and return the
    provider's redirect to `back_to` (the relying party's redirect URI), unfollowed."""
    response = await browser.get(url)
    with anyio.fail_after(30):
        for _ in range(_MAX_STEPS):
            location = response.headers.get("location")
            if response.is_redirect and location is not None:
                target = urljoin(str(response.url), location)
                if target.startswith(back_to):
                    return response
                response = await browser.get(target)
                continue
            assert response.status_code == 200, (response.status_code, response.text[:500])
            page = _Page()
            page.feed(response.text)
            assert page.action is not None, response.text[:500]
            fields = dict(page.fields)
            if fields.get("prompt") == "login":
                fields |= {"login": login, "password": "any password will do"}
            response = await browser.post(urljoin(str(response.url), page.action), data=fields)
    raise AssertionError(f"the provider did not send the browser back within {_MAX_STEPS} steps")


async def abort_at(browser: httpx2.AsyncClient, url: str, back_to: str) -> httpx2.Response:
    """Open `url` and cancel on the login page; the provider's redirect to `back_to`, unfollowed."""
    with anyio.fail_after(30):
        response = await browser.get(url)
        while response.is_redirect and not response.headers["location"].startswith(back_to):
            response = await browser.get(urljoin(str(response.url), response.headers["location"]))
        page = _Page()
        page.feed(response.text)
        [cancel] = [link for link in page.links if urlsplit(link).path.endswith("/abort")]
        response = await browser.get(urljoin(str(response.url), cancel))
        while response.is_redirect and not response.headers["location"].startswith(back_to):
            response = await browser.get(urljoin(str(response.url), response.headers["location"]))
    return response
