"""A console user over plain HTTP: signs in on the form, keeps the session cookie, reads pages
and posts their forms with the CSRF token the page carries (as a browser would)."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from uuid import uuid4

import httpx2

from store import IssuedToken, SignInClient, SignInCode, Store, utc_now

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(page: str) -> str:
    found = _CSRF.search(page)
    assert found, "the page has no form with a CSRF token"
    return html.unescape(found.group(1))


class ConsoleClient:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx2.AsyncClient(base_url=base_url, timeout=20.0, follow_redirects=False)

    async def __aenter__(self) -> ConsoleClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def sign_in(self, key: str) -> httpx2.Response:
        form = await self.http.get("/admin/signin")
        assert form.status_code == 200, form.text
        return await self.http.post("/admin/signin", data={"api_key": key, "csrf": csrf_of(form.text)})

    async def get(self, path: str, **params: str) -> httpx2.Response:
        return await self.http.get(path, params=params)

    async def submit(self, page_path: str, post_path: str | None = None, **fields: str) -> httpx2.Response:
        """Open `page_path` and post its form (to `post_path`, else the page itself) with `fields`
        and the page's CSRF token."""
        page = await self.http.get(page_path)
        assert page.status_code == 200, page.text
        return await self.http.post(post_path or page_path, data={**fields, "csrf": csrf_of(page.text)})


async def open_grant(store: Store, organisation_id: str, api_key_id: str) -> str:
    """A host sign-in approved with this key, as the authorization server opens one; its id."""
    now = utc_now()
    client = await store.signin.save_client(
        SignInClient(
            str(uuid4()), str(uuid4()), "registered", {"redirect_uris": ["https://h.example/cb"]}, None, now
        )
    )
    code = "mgc_" + uuid4().hex
    what = SignInCode(
        client.client_id, client.id, "Host", "https://h.example/cb", "c" * 43, "https://gw.example/mcp",
        "mcp", organisation_id, api_key_id, now + timedelta(minutes=1),
    )  # fmt: skip
    await store.signin.issue_code(code, what, now)
    assert await store.signin.redeem_code(code, now) is not None
    grant_id = str(uuid4())
    await store.signin.open_grant(
        code, grant_id, IssuedToken("mga_" + uuid4().hex, now + timedelta(hours=1)), None, now
    )
    return grant_id
