"""The admin console over plain HTTP (the browser scenarios are in `test_console_browser.py`):
signing in, tenancy (another organisation's ids answer 404 on every route), CSRF on every
POST, and no secret on any page."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import anyio
import httpx2
import pytest

from store import Binding, Seek, utc_now
from tests.api.conftest import TIMEOUT, McpClient, Tenant, new_tenant
from tests.api.console_client import ConsoleClient, csrf_of, open_grant
from tests.harness import RunningGateway


@pytest.fixture
async def console(keyed: RunningGateway) -> AsyncIterator[ConsoleClient]:
    async with ConsoleClient(keyed.base_url) as client:
        yield client


async def signed_in(console: ConsoleClient, tenant: Tenant) -> None:
    answer = await console.sign_in(tenant.key)
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/admin/sessions"


async def test_an_admin_signs_in_with_a_key_and_holds_a_sealed_httponly_strict_cookie_not_the_key(
    keyed: RunningGateway, console: ConsoleClient
) -> None:
    admin = await new_tenant(keyed, "console-signin", admin=True)
    with anyio.fail_after(TIMEOUT):
        answer = await console.sign_in(admin.key)
        page = await console.get("/admin/sessions")
    assert answer.status_code == 303, answer.text
    cookie = next(v for k, v in answer.headers.multi_items() if k == "set-cookie" and "mcpgw_console=" in v)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/admin" in cookie
    assert "Max-Age=" in cookie and admin.key not in cookie and admin.api_key_id not in cookie
    assert admin.key not in str(answer.headers.get("location"))
    assert page.status_code == 200 and "<h1>Sessions</h1>" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "<script" not in page.text


async def test_a_key_that_is_not_an_admins_gets_a_403_page_and_no_session(
    keyed: RunningGateway, console: ConsoleClient
) -> None:
    user = await new_tenant(keyed, "console-user")
    with anyio.fail_after(TIMEOUT):
        answer = await console.sign_in(user.key)
        wrong = await console.sign_in("mgw_not-a-key")
        page = await console.get("/admin/sessions")
    assert answer.status_code == 403 and "not an admin" in answer.text
    assert "mcpgw_console=" not in answer.headers.get("set-cookie", "")
    assert wrong.status_code == 401
    assert page.status_code == 303 and page.headers["location"] == "/admin/signin"


async def test_a_revoked_admin_key_ends_its_console_session_at_once(
    keyed: RunningGateway, console: ConsoleClient
) -> None:
    admin = await new_tenant(keyed, "console-revoked-admin", admin=True)
    with anyio.fail_after(TIMEOUT):
        await signed_in(console, admin)
        assert (await console.get("/admin/keys")).status_code == 200
        await keyed.gateway.store.revoke_api_key(admin.api_key_id)
        after = await console.get("/admin/keys")
    assert after.status_code == 303 and after.headers["location"] == "/admin/signin"


async def test_a_post_without_the_sessions_csrf_token_is_refused_and_changes_nothing(
    keyed: RunningGateway, console: ConsoleClient
) -> None:
    admin = await new_tenant(keyed, "console-csrf", admin=True)
    victim = await keyed.gateway.store.create_api_key(admin.organisation_id)
    with anyio.fail_after(TIMEOUT):
        await signed_in(console, admin)
        bare = await console.http.post(f"/admin/keys/{victim.key.id}/revoke")
        forged = await console.http.post(f"/admin/keys/{victim.key.id}/revoke", data={"csrf": "guess"})
        created = await console.http.post("/admin/keys", data={"user": "mallory", "admin": "on"})
        signin_forged = await console.http.post("/admin/signin", data={"api_key": admin.key, "csrf": "x"})
        # Not ASCII: compared as text, such a token made compare_digest raise (a 500).
        forged_text = await console.http.post(f"/admin/keys/{victim.key.id}/revoke", data={"csrf": "é" * 8})
        signin_text = await console.http.post("/admin/signin", data={"api_key": admin.key, "csrf": "ü"})
    assert [bare.status_code, forged.status_code, created.status_code] == [403, 403, 403]
    assert [signin_forged.status_code, forged_text.status_code, signin_text.status_code] == [403, 403, 403]
    keys = await keyed.gateway.store.list_api_keys(admin.organisation_id)
    assert [key.id for key in keys] == [admin.api_key_id, victim.key.id]  # nothing created
    assert all(key.revoked_at is None for key in keys)


async def test_every_console_route_with_another_organisations_ids_answers_404(
    keyed: RunningGateway, console: ConsoleClient, http: httpx2.AsyncClient
) -> None:
    mine = await new_tenant(keyed, "console-mine", admin=True)
    theirs = await new_tenant(keyed, "console-theirs", admin=True)
    store = keyed.gateway.store
    with anyio.fail_after(TIMEOUT):
        mcp = McpClient(http, keyed.url, theirs.key)
        await mcp.call(await mcp.open(), "demo__echo", {"text": "theirs"})
        [their_session] = (
            await store.list_sessions(theirs.organisation_id, api_key_id=None, seek=_start(), limit=5)
        ).rows
        binding = Binding(theirs.organisation_id, "demo", "vk", theirs.api_key_id)
        flow_id = str(uuid.uuid4())
        now = utc_now()
        await store.credentials.create_flow(
            flow_id, binding, "headers", secret={}, oauth_client_id=None, now=now,
            expires_at=now + timedelta(minutes=15),
        )  # fmt: skip
        grant_id = await open_grant(store, theirs.organisation_id, theirs.api_key_id)
        await signed_in(console, mine)
        csrf = csrf_of((await console.get("/admin/keys")).text)
        reads = [
            f"/admin/sessions/{their_session.id}",
            f"/admin/keys/{theirs.api_key_id}/revoke",
            f"/admin/credentials/{flow_id}/reauth",
            f"/admin/credentials/{flow_id}/delete",
            f"/admin/grants/{grant_id}/revoke",
        ]
        read_answers = [(path, (await console.get(path)).status_code) for path in reads]
        listing = await console.get("/admin/sessions", key=theirs.api_key_id)
        write_answers = [
            (path, (await console.http.post(path, data={"csrf": csrf})).status_code) for path in reads[1:]
        ]
        pages = {path: (await console.get(path)).text for path in ("/admin/sessions", "/admin/keys",
                 "/admin/credentials", "/admin/grants")}  # fmt: skip
    assert all(status == 404 for _, status in read_answers), read_answers
    assert listing.status_code == 404
    assert all(status == 404 for _, status in write_answers), write_answers
    assert await store.live_api_keys(theirs.organisation_id, api_key_id=theirs.api_key_id)
    assert [g.revoked_at for g in await store.signin.grants(theirs.organisation_id)] == [None]
    assert await store.credentials.flow(flow_id) is not None
    for path, text in pages.items():
        for their_id in (their_session.id, theirs.api_key_id, flow_id, grant_id):
            assert their_id not in text, (path, their_id)


async def test_no_page_shows_a_secret_and_a_new_key_is_shown_once(
    keyed: RunningGateway, console: ConsoleClient, http: httpx2.AsyncClient
) -> None:
    admin = await new_tenant(keyed, "console-secrets", admin=True)
    store = keyed.gateway.store
    user = await store.create_api_key(admin.organisation_id, user_id="alice")
    token = "ghp_" + "a1b2c3d4" * 5
    with anyio.fail_after(TIMEOUT):
        mcp = McpClient(http, keyed.url, user.secret)
        await mcp.call(await mcp.open(), "demo__echo", {"text": "hi", "authorization": f"Bearer {token}"})
        await signed_in(console, admin)
        created = await console.submit("/admin/keys", user="bob", tools_deny="demo__wait")
        secret = re.search(r'id="new-key" value="([^"]+)"', created.text)
        assert created.status_code == 201 and secret is not None
        [session] = (
            await store.list_sessions(admin.organisation_id, api_key_id=None, seek=_start(), limit=5)
        ).rows
        pages = [
            await console.get(path)
            for path in (
                "/admin/sessions", f"/admin/sessions/{session.id}", "/admin/keys", "/admin/credentials",
                "/admin/upstreams", "/admin/grants",
            )
        ]  # fmt: skip
    assert (await store.find_api_key(secret.group(1))) is not None  # the key shown works
    for page in pages:
        assert page.status_code == 200, (page.request.url, page.text)
        for value in (admin.key, user.secret, secret.group(1), token):
            assert value not in page.text, page.request.url
    assert "hi" in pages[1].text  # the timeline shows the call, its secret redacted


def _start() -> Seek:
    return Seek()


def names(page: httpx2.Response) -> list[str]:
    """The client names of the sessions a page lists."""
    return re.findall(r"<td>(a\d|b\d) 1</td>", page.text)


def _links(page: str, rel: str) -> list[str]:
    return [html.unescape(href) for href in re.findall(rf'<a rel="{rel}" href="([^"]+)"', page)]


async def test_sessions_filtered_by_user_client_and_time_page_with_cursors_the_api_accepts(
    keyed: RunningGateway, console: ConsoleClient, http: httpx2.AsyncClient
) -> None:
    admin = await new_tenant(keyed, "console-filter", admin=True)
    store = keyed.gateway.store
    alice = await store.create_api_key(admin.organisation_id, user_id="alice")
    bob = await store.create_api_key(admin.organisation_id, user_id="bob")
    with anyio.fail_after(TIMEOUT):
        for created, client_name in ((alice, "a1"), (bob, "b1"), (alice, "a2"), (alice, "a3")):
            mcp = McpClient(http, keyed.url, created.secret)
            await mcp.call(await mcp.open(name=client_name), "demo__echo", {"text": client_name})
        await signed_in(console, admin)
        first = await console.get("/admin/sessions", user="alice", Limit="2")
        [following] = _links(first.text, "next")
        second = await console.http.get(following)
        cursor = following.rpartition("Cursor=")[2]
        from_api = await http.get(
            f"{keyed.base_url}/mcp/{admin.organisation_id}/sessions",
            params={"Cursor": cursor, "Limit": "2"},
            headers={"x-api-key": alice.secret},  # the same query: alice's sessions
        )
        everyone = await console.get("/admin/sessions")
        future = await console.get(
            "/admin/sessions", since=(utc_now() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
        )
        past = await console.get(
            "/admin/sessions", until=(utc_now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
        )
        bad_time = await console.get("/admin/sessions", since="yesterday")
        nobody = await console.get("/admin/sessions", user="carol")
        one_client = await console.get("/admin/sessions", client="b1", Limit="1")
        alices_a2 = await console.get("/admin/sessions", user="alice", client="a2")
    assert names(first) == ["a3", "a2"] and names(second) == ["a1"]
    assert "alice" in first.text and _links(second.text, "next") == []
    assert from_api.status_code == 200  # the console pages with the API's own cursors
    assert [row["clientName"] for row in from_api.json()["data"]] == ["a1"]
    assert names(everyone) == ["a3", "a2", "b1", "a1"]
    assert names(future) == [] and names(past) == []
    assert bad_time.status_code == 400
    assert nobody.status_code == 200 and "No key is bound to user" in nobody.text
    assert names(one_client) == ["b1"] and _links(one_client.text, "next") == []
    assert names(alices_a2) == ["a2"]


async def test_a_sessions_timeline_shows_each_call_pretty_printed_with_large_payloads_cut_and_sized(
    keyed: RunningGateway, console: ConsoleClient, http: httpx2.AsyncClient
) -> None:
    admin = await new_tenant(keyed, "console-timeline", admin=True)
    big = "x" * 40_000
    with anyio.fail_after(TIMEOUT):
        mcp = McpClient(http, keyed.url, admin.key)
        session_id = await mcp.open()
        await mcp.call(session_id, "demo__echo", {"text": "small one"}, headers={"traceparent": _TRACE})
        await mcp.call(session_id, "demo__echo", {"text": big})
        await mcp.call(session_id, "demo__no_such_tool", {})
        await signed_in(console, admin)
        listing = await console.get("/admin/sessions")
        [opened] = re.findall(r'href="(/admin/sessions/[0-9a-f-]{36})"', listing.text)
        timeline = await console.get(opened)
        paged = await console.get(opened, Limit="2")
        [later] = _links(paged.text, "next")
        rest = await console.http.get(opened + later)
    page = timeline.text
    assert timeline.status_code == 200
    assert page.count("<details>") == 3
    assert '<pre class="arguments">{\n  &#34;text&#34;: &#34;small one&#34;\n}</pre>' in page  # indented JSON
    assert _TRACE.split("-")[1] in page  # the host's trace id
    assert "first 16 KiB shown" in page and "39.1 KiB" in page and big not in page
    assert re.search(r'<meter min="0" max="\d+" value="\d+">', page)
    outcomes = re.findall(r'<span class="badge (?:ok|bad)">([a-z_]+)</span>', page)
    assert outcomes[:2] == ["ok", "ok"] and outcomes[2] != "ok"
    assert rest.text.count("<details>") == 1


_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_the_upstreams_page_shows_each_upstreams_state_and_last_hour(
    keyed: RunningGateway, console: ConsoleClient, http: httpx2.AsyncClient
) -> None:
    admin = await new_tenant(keyed, "console-upstreams", admin=True)
    before = keyed.gateway.window.summary("demo").calls
    with anyio.fail_after(TIMEOUT):
        mcp = McpClient(http, keyed.url, admin.key)
        session = await mcp.open()
        await mcp.call(session, "demo__echo", {"text": "one"})
        await mcp.call(session, "demo__fail", {})
        await signed_in(console, admin)
        page = await console.get("/admin/upstreams")
    [row] = re.findall(r"<tr>\s*<td>demo</td>(.*?)</tr>", page.text, re.S)
    cells = [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
    transport, state, _, calls, rate, p50, p99 = cells
    assert (transport, state) == ("stdio", "up")
    assert int(calls) == before + 2 and rate.endswith("%") and p50.endswith("ms") and p99.endswith("ms")


async def test_an_admin_revokes_a_host_sign_in_behind_a_confirmation(
    keyed: RunningGateway, console: ConsoleClient
) -> None:
    admin = await new_tenant(keyed, "console-grants", admin=True)
    store = keyed.gateway.store
    user = await store.create_api_key(admin.organisation_id, user_id="alice")
    grant_id = await open_grant(store, admin.organisation_id, user.key.id)
    with anyio.fail_after(TIMEOUT):
        await signed_in(console, admin)
        listed = await console.get("/admin/grants")
        revoked = await console.submit(f"/admin/grants/{grant_id}/revoke")
        after = await console.get("/admin/grants")
    assert "alice" in listed.text and f"/admin/grants/{grant_id}/revoke" in listed.text
    assert revoked.status_code == 303 and revoked.headers["location"] == "/admin/grants"
    assert "revoked (revoked)" in after.text and f"/admin/grants/{grant_id}/revoke" not in after.text
    [grant] = await store.signin.grants(admin.organisation_id)
    assert grant.revoked_at is not None


async def test_signing_out_ends_the_console_session(keyed: RunningGateway, console: ConsoleClient) -> None:
    admin = await new_tenant(keyed, "console-signout", admin=True)
    with anyio.fail_after(TIMEOUT):
        await signed_in(console, admin)
        out = await console.submit("/admin/sessions", "/admin/signout")
        after = await console.get("/admin/sessions")
    assert out.status_code == 303 and out.headers["location"] == "/admin/signin"
    assert after.status_code == 303 and after.headers["location"] == "/admin/signin"


async def test_credentials_show_their_status_and_reauth_and_delete_follow_the_apis_rules(
    keyed: RunningGateway, console: ConsoleClient
) -> None:
    admin = await new_tenant(keyed, "console-credentials", admin=True)
    store = keyed.gateway.store
    now = utc_now()
    bobs, vks = str(uuid.uuid4()), str(uuid.uuid4())
    for row_id, binding in (
        (bobs, Binding(admin.organisation_id, "demo", "user", "bob")),
        (vks, Binding(admin.organisation_id, "demo", "vk", admin.api_key_id)),
    ):
        await store.credentials.save(
            row_id, binding, kind="header", secret={"x-token": "s3cr3t-value"}, header_names=("x-token",),
            oauth_client_id=None, expires_at=None, now=now,
        )  # fmt: skip
    await store.credentials.set_status(bobs, "needs_reauth")
    with anyio.fail_after(TIMEOUT):
        await signed_in(console, admin)
        listed = await console.get("/admin/credentials")
        only_reauth = await console.get("/admin/credentials", status="needs_reauth")
        not_bobs_admin = await console.submit(f"/admin/credentials/{bobs}/reauth")
        confirm = await console.get(f"/admin/credentials/{vks}/delete")
        deleted = await console.submit(f"/admin/credentials/{vks}/delete")
        after = await console.get("/admin/credentials")
        bad_status = await console.get("/admin/credentials", status="lost")
    assert "status-needs_reauth" in listed.text and "status-active" in listed.text
    assert "s3cr3t-value" not in listed.text
    assert f"/admin/credentials/{bobs}/reauth" not in listed.text  # can_reauth: bob's, not this admin's
    assert f"/admin/credentials/{vks}/reauth" in listed.text
    assert f'id="credential-{bobs}"' in only_reauth.text and f'id="credential-{vks}"' not in only_reauth.text
    assert not_bobs_admin.status_code == 403 and "Only the user" in not_bobs_admin.text
    assert confirm.status_code == 200 and "Delete this credential?" in confirm.text
    assert deleted.status_code == 303 and f'id="credential-{vks}"' not in after.text
    assert await store.credentials.credential(admin.organisation_id, vks) is None
    assert bad_status.status_code == 400
