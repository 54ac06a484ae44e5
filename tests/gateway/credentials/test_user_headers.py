"""Per-user header credentials: the first call links to a form, the form's values are checked
with the upstream before they are kept, and each user's calls carry only their own values."""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from store import Binding, CredentialFilter, utc_now
from store.keys import display_prefix
from tests.api.conftest import McpClient, spec_validator
from tests.connecting import (
    confirm,
    connect_url,
    form_of,
    leaks,
    people,
    serve_gateway_at_own_url,
    submit_headers,
    text_of,
)
from tests.harness import ROOT, RunningGateway
from tests.upstreams import KeyedUpstream, serve_keyed_upstream

ALICE_KEY, BOB_KEY = "vault-key-alice-8c1f07d2", "vault-key-bob-42aa90e1"
WRONG_KEY = "vault-key-wrong-5b3e11c9"
TIMEOUT = 30.0
ROW = spec_validator("credential-sessions.openapi.yaml", "MCPSessionsListResponse")


@dataclass
class World:
    gateway: RunningGateway
    upstream: KeyedUpstream
    http: httpx2.AsyncClient
    alice: McpClient
    bob: McpClient
    admin: dict[str, str]
    directory: Path


def config_body(upstream_url: str, names: str = "[X-Api-Key]") -> str:
    return f"""
auth: {{required: true}}
upstreams:
  - name: vault
    transport: http
    url: {upstream_url}
    auth: {{kind: user_headers, identity: user, headers: {names}}}
"""


@pytest.fixture
async def world(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[World]:
    caplog.set_level(logging.DEBUG)
    owners = {ALICE_KEY: "alice", BOB_KEY: "bob"}
    async with (
        serve_keyed_upstream(owners) as upstream,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
        serve_gateway_at_own_url(tmp_path, config_body(upstream.url)) as gateway,
    ):
        users = await people(gateway, http)
        yield World(gateway, upstream, http, users.alice, users.bob, users.admin, tmp_path)


async def test_a_user_connects_with_a_form_and_then_calls_with_their_own_key(world: World) -> None:
    with anyio.fail_after(TIMEOUT):
        session = await world.alice.open()
        listed = await world.alice.request(session, "tools/list", {})
        assert [t["name"] for t in listed["result"]["tools"]] == ["vault__connect_account"]

        url = connect_url(await world.alice.call(session, "vault__whoami", {}))
        page = await world.http.get(url)
        assert page.status_code == 200 and 'type="password"' not in page.text  # first: whose it is
        assert page.headers["cache-control"] == "no-store"
        form = await confirm(world.http, url)
        assert form.status_code == 200 and 'name="X-Api-Key"' in form.text and 'type="password"' in form.text
        assert form.headers["cache-control"] == "no-store"
        submit = form_of(form).action

        refused = await world.http.post(submit, data={"X-Api-Key": WRONG_KEY})
        assert refused.status_code == 422 and WRONG_KEY not in refused.text
        store = world.gateway.gateway.store
        rows = await store.credentials.listing(await org_id(world), CredentialFilter(), None, 10, utc_now())
        assert [(r.kind, r.status) for r in rows] == [("flow", "pending")]  # nothing stored

        missing = await world.http.post(submit, data={"X-Other": "x"})
        assert missing.status_code == 400 and "X-Api-Key" in missing.text

        saved = await world.http.post(submit, data={"X-Api-Key": ALICE_KEY, "X-Undeclared": "dropped"})
        assert saved.status_code == 200, saved.text
        assert ALICE_KEY not in saved.text
        replay = await world.http.post(submit, data={"X-Api-Key": ALICE_KEY})
        assert replay.status_code == 400
        assert (await world.http.get(url)).status_code == 400  # the link is used up too

        assert text_of(await world.alice.call(session, "vault__whoami", {})) == "alice"
        listed = await world.alice.request(session, "tools/list", {})
        assert [t["name"] for t in listed["result"]["tools"]] == ["vault__whoami"]
        last = world.upstream.seen[-1]
        assert last["x-api-key"] == ALICE_KEY and "x-undeclared" not in last
        assert all(not h.get("authorization") for h in world.upstream.seen)  # the host's key stays home


async def test_two_users_never_share_a_credential(world: World) -> None:
    with anyio.fail_after(TIMEOUT):
        alice_session, bob_session = await world.alice.open(), await world.bob.open()
        alice_url = connect_url(await world.alice.call(alice_session, "vault__whoami", {}))
        bob_url = connect_url(await world.bob.call(bob_session, "vault__whoami", {}))
        assert alice_url != bob_url

        someone_else = await world.http.get(alice_url, headers={"x-api-key": world.bob.key})
        assert someone_else.status_code == 403
        assert (await submit_headers(world.http, alice_url, {"X-Api-Key": ALICE_KEY})).status_code == 200

        assert connect_url(await world.bob.call(bob_session, "vault__whoami", {})) == bob_url
        assert (await submit_headers(world.http, bob_url, {"X-Api-Key": BOB_KEY})).status_code == 200
        assert text_of(await world.bob.call(bob_session, "vault__whoami", {})) == "bob"
        assert text_of(await world.alice.call(alice_session, "vault__whoami", {})) == "alice"


async def test_the_page_names_whose_values_they_become_and_only_the_confirming_browser_may_send_them(
    world: World,
) -> None:
    """Bob's link, opened by someone else: before any form, the page says the values will be
    bob's. A confirmation or a form posted by a browser that did not open the page (another
    cookie jar, as a forged cross-site post would be) is refused and stores nothing."""
    with anyio.fail_after(TIMEOUT):
        url = connect_url(await world.bob.call(await world.bob.open(), "vault__whoami", {}))
        page = await world.http.get(url)
        assert page.status_code == 200 and 'type="password"' not in page.text
        assert "user <strong>bob</strong>" in page.text and "<strong>default</strong>" in page.text
        assert "vault" in page.text
        confirmation = form_of(page)
        submit = form_of(await confirm(world.http, url)).action
        async with httpx2.AsyncClient(timeout=TIMEOUT) as elsewhere:
            forged = await elsewhere.post(confirmation.action, data=confirmation.hidden)
            posted = await elsewhere.post(submit, data={"X-Api-Key": ALICE_KEY})
        assert forged.status_code == 403 and 'type="password"' not in forged.text
        assert posted.status_code == 403 and "browser" in posted.text
        tampered = await world.http.post(confirmation.action, data={**confirmation.hidden, "csrf": "x" * 32})
        assert tampered.status_code == 403
        store = world.gateway.gateway.store
        rows = await store.credentials.listing(await org_id(world), CredentialFilter(), None, 10, utc_now())
        assert [(r.kind, r.status) for r in rows] == [("flow", "pending")]
        assert not any(h.get("x-api-key") == ALICE_KEY for h in world.upstream.seen)  # not even tried

        assert (await world.http.post(submit, data={"X-Api-Key": BOB_KEY})).status_code == 200
        assert text_of(await world.bob.call(await world.bob.open(), "vault__whoami", {})) == "bob"


async def test_the_page_escapes_the_names_it_shows(world: World) -> None:
    store = world.gateway.gateway.store
    odd = await store.create_api_key(await org_id(world), user_id='<i>eve</i>&"co"')
    client = McpClient(world.http, world.gateway.url, odd.secret)
    with anyio.fail_after(TIMEOUT):
        url = connect_url(await client.call(await client.open(), "vault__whoami", {}))
        page = await world.http.get(url)
    assert page.status_code == 200 and "&lt;i&gt;eve&lt;/i&gt;&amp;&quot;co&quot;" in page.text
    assert "<i>" not in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")


async def test_the_call_without_a_credential_is_recorded_as_auth_required(world: World) -> None:
    with anyio.fail_after(TIMEOUT):
        session = await world.alice.open()
        await world.alice.call(session, "vault__whoami", {})
        org = await org_id(world)
        listed = await world.http.get(f"{world.gateway.base_url}/mcp/{org}/sessions", headers=world.admin)
        [recorded] = listed.json()["data"]
        detail = await world.http.get(
            f"{world.gateway.base_url}/mcp/{org}/sessions/{recorded['id']}", headers=world.admin
        )
        [call] = detail.json()["invocations"]
        assert (call["outcome"], call["success"], call["upstream"]) == ("auth_required", False, "vault")


async def test_a_connect_link_is_a_capability_the_gateway_keeps_only_hashed_and_sealed(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    with anyio.fail_after(TIMEOUT):
        session = await world.alice.open()
        url = connect_url(await world.alice.call(session, "vault__whoami", {}))
        link = url.rsplit("/", 1)[1]
        rows = await world.http.get(f"{world.gateway.base_url}/api/mcp/sessions", headers=world.admin)
        assert rows.status_code == 200 and link not in rows.text  # admins see the flow, not its link
        assert connect_url(await world.alice.call(session, "vault__whoami", {})) == url  # offered again
        assert (await world.http.get(url)).status_code == 200
    # Neither the flow's row, the record of the call that handed the link out, nor the gateway's
    # log holds it (the test's own HTTP client logs the URLs it fetches: not the gateway's log).
    log = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("httpx2", "httpcore2")))
    assert leaks(world.directory, log, [link]) == []


async def test_bad_flow_urls_get_clear_answers(world: World) -> None:
    with anyio.fail_after(TIMEOUT):
        base = world.gateway.base_url
        assert (await world.http.get(f"{base}/connect/{'A' * 43}")).status_code == 404
        assert (await world.http.get(f"{base}/connect/not-a-link")).status_code == 404
        store = world.gateway.gateway.store
        expired, past = "S" * 43, utc_now() - timedelta(minutes=1)
        flow_id = "6a0d5c1e-7f7e-4c55-9b1e-2f7d1c6e0a01"
        await store.credentials.create_flow(
            flow_id, Binding(await org_id(world), "vault", "user", "alice"), "headers",
            secret={"link": expired}, oauth_client_id=None, now=past - timedelta(minutes=15), expires_at=past,
        )  # fmt: skip
        assert (await world.http.get(f"{base}/connect/{expired}")).status_code == 410
        assert (await world.http.get(f"{base}/connect/{flow_id}")).status_code == 404  # an id is no link
        assert (await world.http.get(f"{base}/oauth/callback?state=nope&code=x")).status_code == 400
        assert (await world.http.get(f"{base}/oauth/callback")).status_code == 400


async def test_the_listing_api_shows_rows_by_status_and_changing_the_headers_asks_for_them_again(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    with anyio.fail_after(TIMEOUT):
        session = await world.alice.open()
        url = connect_url(await world.alice.call(session, "vault__whoami", {}))
        await submit_headers(world.http, url, {"X-Api-Key": ALICE_KEY})
        bob_session = await world.bob.open()
        await world.bob.call(bob_session, "vault__whoami", {})

        api = f"{world.gateway.base_url}/api/mcp/sessions"
        assert (await world.http.get(api)).status_code == 401
        # A key that is not an admin's is authenticated, not allowed.
        assert (await world.http.get(api, headers={"x-api-key": world.alice.key})).status_code == 403
        listed = await world.http.get(api, headers=world.admin)
        assert listed.status_code == 200
        ROW.validate(listed.json())
        rows = {(r["kind"], r["user_id"], r["status"], r["auth_kind"]) for r in listed.json()["sessions"]}
        assert rows == {("header", "alice", "active", "headers"), ("flow", "bob", "pending", "headers")}
        pending = await world.http.get(api, params={"status": "pending"}, headers=world.admin)
        assert [r["user_id"] for r in pending.json()["sessions"]] == ["bob"]
        assert (await world.http.get(api, params={"status": "bogus"}, headers=world.admin)).status_code == 400

    # The admin now asks for a second header: alice's stored values no longer fit.
    async with serve_keyed_upstream({ALICE_KEY: "alice"}) as upstream:
        body = config_body(upstream.url, "[X-Api-Key, X-Team]")
        async with serve_gateway_at_own_url(world.directory, body) as restarted:
            with anyio.fail_after(TIMEOUT):
                listed = await world.http.get(f"{restarted.base_url}/api/mcp/sessions", headers=world.admin)
                statuses = {r["user_id"]: r["status"] for r in listed.json()["sessions"]}
                assert statuses["alice"] == "needs_update"
                client = McpClient(world.http, restarted.url, world.alice.key)
                again = await client.call(await client.open(), "vault__whoami", {})
                form = await confirm(world.http, connect_url(again))
                assert 'name="X-Team"' in form.text

    assert leaks(world.directory, caplog.text, [ALICE_KEY, BOB_KEY, WRONG_KEY]) == []


async def org_id(world: World) -> str:
    return (await world.gateway.gateway.store.ensure_organisation("default")).id


async def test_rotating_the_key_beside_a_running_gateway_reseals_everything(world: World) -> None:
    with anyio.fail_after(TIMEOUT):
        session = await world.alice.open()
        url = connect_url(await world.alice.call(session, "vault__whoami", {}))
        assert (await submit_headers(world.http, url, {"X-Api-Key": ALICE_KEY})).status_code == 200
        store = world.gateway.gateway.store
        (before,) = await store.credentials.key_ids_in_use()

        rotated = await anyio.run_process(
            [sys.executable, "-m", "gateway.cli", "secrets", "rotate", "--drop-old",
             "--config", str(world.directory / "config.yaml")],
            cwd=ROOT,
        )  # fmt: skip
        report = json.loads(rotated.stdout)
        assert report["resealed"] == 2  # her credential, and the (claimed) flow that made it
        assert report["dropped"] == [before] and report["keyId"] != before

        # The running gateway reads the rewritten key file: it opens what was re-sealed...
        alice = await store.credentials.credential_for(Binding(await org_id(world), "vault", "user", "alice"))
        assert alice is not None and alice.secret["X-Api-Key"] == ALICE_KEY
        # ...and seals what comes next under the new key.
        bob_url = connect_url(await world.bob.call(await world.bob.open(), "vault__whoami", {}))
        assert (await submit_headers(world.http, bob_url, {"X-Api-Key": BOB_KEY})).status_code == 200
        assert await store.credentials.key_ids_in_use() == {report["keyId"]}
        assert text_of(await world.alice.call(session, "vault__whoami", {})) == "alice"


async def test_a_credential_is_orphaned_while_its_user_has_no_key_that_reaches_the_upstream(
    world: World,
) -> None:
    with anyio.fail_after(TIMEOUT):
        session = await world.alice.open()
        url = connect_url(await world.alice.call(session, "vault__whoami", {}))
        assert (await submit_headers(world.http, url, {"X-Api-Key": ALICE_KEY})).status_code == 200
        gateway = world.gateway.gateway
        org = await org_id(world)
        operator = await gateway.store.create_api_key(org, is_admin=True)  # bound to nobody
        admin = {"authorization": f"Bearer {operator.secret}"}
        api = f"{world.gateway.base_url}/api/mcp/sessions"

        async def row_after_policy_check() -> dict[str, Any]:
            await gateway.broker.reconcile()  # what the gateway's minute-by-minute check runs
            [row] = (await world.http.get(api, headers=admin)).json()["sessions"]
            return dict(row)

        for key in await gateway.store.live_api_keys(org, user_id="alice"):
            await gateway.store.revoke_api_key(key.id)
        orphaned = await row_after_policy_check()
        assert (orphaned["status"], orphaned["can_reauth"]) == ("orphaned", False)
        refused = await world.http.post(f"{api}/{orphaned['id']}/reauth", headers=admin)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "orphaned"

        await gateway.store.create_api_key(org, user_id="alice", tools_deny=["vault__*"])
        assert (await row_after_policy_check())["status"] == "orphaned"
        await gateway.store.create_api_key(org, user_id="alice", tools_allow=["vault__*"])
        assert (await row_after_policy_check())["status"] == "active"


async def test_a_host_that_shows_url_elicitations_is_asked_to_open_the_link(world: World) -> None:
    with anyio.fail_after(TIMEOUT):
        init = {
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {"elicitation": {"url": {}}},
                       "clientInfo": {"name": "url-host", "version": "1"}},
        }  # fmt: skip
        headers = {"accept": "application/json, text/event-stream", "x-api-key": world.alice.key}
        opened = await world.http.post(world.gateway.url, json=init, headers=headers)
        headers["mcp-session-id"] = opened.headers["mcp-session-id"]
        await world.http.post(
            world.gateway.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
        )
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "vault__whoami"}}
        messages = []
        async with world.http.stream("POST", world.gateway.url, json=call, headers=headers) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            async for event in httpx2.EventSource(response):
                if event.data:
                    messages.append(json.loads(event.data))
        ask, answer = messages
        assert ask["method"] == "elicitation/create" and ask["params"]["mode"] == "url"
        assert ask["params"]["url"] == connect_url(answer)
        # The host's answer to the gateway's own request is taken quietly.
        reply = {"jsonrpc": "2.0", "id": ask["id"], "result": {"action": "accept"}}
        assert (await world.http.post(world.gateway.url, json=reply, headers=headers)).status_code == 202


async def test_a_stateless_2026_host_connects_and_calls_the_same_way(world: World) -> None:
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "modern-host", "version": "1"},
    }
    headers = {
        "accept": "application/json, text/event-stream",
        "x-api-key": world.alice.key,
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "vault__whoami",
    }
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "vault__whoami", "_meta": meta},
    }
    with anyio.fail_after(TIMEOUT):
        first = await world.http.post(world.gateway.url, json=call, headers=headers)
        assert first.status_code == 200, first.text
        url = connect_url(first.json())
        assert (await submit_headers(world.http, url, {"X-Api-Key": ALICE_KEY})).status_code == 200
        second = await world.http.post(world.gateway.url, json=call, headers=headers)
        assert text_of(second.json()) == "alice"
        assert world.upstream.seen[-1]["x-api-key"] == ALICE_KEY


async def test_session_credentials_belong_to_one_session_and_end_with_it(tmp_path: Path) -> None:
    async with (
        serve_keyed_upstream({ALICE_KEY: "alice"}) as upstream,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
        serve_gateway_at_own_url(
            tmp_path, config_body(upstream.url).replace("identity: user", "identity: session")
        ) as gateway,
    ):
        users = await people(gateway, http)
        with anyio.fail_after(TIMEOUT):
            first, second = await users.alice.open(), await users.alice.open()
            url = connect_url(await users.alice.call(first, "vault__whoami", {}))
            page = (await http.get(url)).text
            assert "one MCP session" in page and "<strong>tests 1</strong>" in page  # its client
            assert (await submit_headers(http, url, {"X-Api-Key": ALICE_KEY})).status_code == 200
            assert text_of(await users.alice.call(first, "vault__whoami", {})) == "alice"
            assert connect_url(await users.alice.call(second, "vault__whoami", {})) != url

            api = f"{gateway.base_url}/api/mcp/sessions"
            rows = (await http.get(api, headers=users.admin)).json()["sessions"]
            assert sorted((r["kind"], r["auth_mode"]) for r in rows) == [
                ("flow", "session"),
                ("header", "session"),
            ]
            ended = await http.delete(
                gateway.url, headers={"x-api-key": users.alice.key, "mcp-session-id": first}
            )
            assert ended.status_code in (200, 204)
            rows = (await http.get(api, headers=users.admin)).json()["sessions"]
            assert [r["kind"] for r in rows] == ["flow"]  # the second session's link remains


async def test_a_session_whose_credential_is_deleted_under_it_still_ends_cleanly(world: World) -> None:
    """An admin deletes a credential that an open session's upstream session uses: the host's
    notifications and the end of its session must not fail on the credential being gone (found
    by the fuzz suite: both were a 500, and the idle reaper ending such a session took the
    gateway's task group down)."""
    with anyio.fail_after(TIMEOUT):
        session = await world.alice.open()
        url = connect_url(await world.alice.call(session, "vault__whoami", {}))
        assert (await submit_headers(world.http, url, {"X-Api-Key": ALICE_KEY})).status_code == 200
        assert text_of(await world.alice.call(session, "vault__whoami", {})) == "alice"
        api = f"{world.gateway.base_url}/api/mcp/sessions"
        [row] = (await world.http.get(api, headers=world.admin)).json()["sessions"]
        assert (await world.http.delete(f"{api}/{row['id']}", headers=world.admin)).status_code == 204

        headers = {"accept": "application/json, text/event-stream", "x-api-key": world.alice.key}
        headers["mcp-session-id"] = session
        changed = {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}
        notified = await world.http.post(world.gateway.url, json=changed, headers=headers)
        assert notified.status_code == 202, notified.text
        set_level = {"jsonrpc": "2.0", "id": 9, "method": "logging/setLevel", "params": {"level": "info"}}
        leveled = await world.http.post(world.gateway.url, json=set_level, headers=headers)
        assert leveled.status_code == 200 and leveled.json()["result"] == {}, leveled.text
        ended = await world.http.delete(world.gateway.url, headers=headers)
        assert ended.status_code == 200, ended.text
        gone = await world.http.post(world.gateway.url, json=changed, headers=headers)
        assert gone.status_code == 404  # ended for good, not left half-closed
        assert "vault__connect_account" in str(
            await world.bob.request(await world.bob.open(), "tools/list", {})
        )


async def test_set_level_after_the_sessions_credential_is_deleted_is_still_answered(
    tmp_path: Path, demo_http_url: str
) -> None:
    """As above, for `logging/setLevel`, which goes to every open upstream session that logs
    (the demo does; it takes any header value, so the form is a formality here)."""
    body = config_body(demo_http_url).replace("identity: user", "identity: vk")
    async with (
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
        serve_gateway_at_own_url(tmp_path, body) as gateway,
    ):
        users = await people(gateway, http)
        with anyio.fail_after(TIMEOUT):
            session = await users.alice.open()
            url = connect_url(await users.alice.call(session, "vault__echo", {"text": "hi"}))
            assert f"the API key <strong>{display_prefix(users.alice.key)}" in (await http.get(url)).text
            assert (await submit_headers(http, url, {"X-Api-Key": "any"})).status_code == 200
            assert text_of(await users.alice.call(session, "vault__echo", {"text": "hi"})) == "hi"
            api = f"{gateway.base_url}/api/mcp/sessions"
            [row] = (await http.get(api, headers=users.admin)).json()["sessions"]
            assert (await http.delete(f"{api}/{row['id']}", headers=users.admin)).status_code == 204
            leveled = await users.alice.request(session, "logging/setLevel", {"level": "info"})
    assert leveled["result"] == {}


async def test_a_tool_denied_to_a_key_is_refused_even_while_its_upstream_is_routed_by_prefix(
    world: World,
) -> None:
    """Before its user connects, an upstream's tools are routed by prefix alone (nothing could
    be listed). A credential that turns usable without the catalogue being listed again (here
    saved behind the gateway's back; in life, an authorization server back from an outage)
    must not open a tool the key's filter denies."""
    store = world.gateway.gateway.store
    org = await org_id(world)
    narrowed = await store.create_api_key(org, user_id="alice", tools_deny=["vault__whoami"])
    alice = McpClient(world.http, world.gateway.url, narrowed.secret)
    with anyio.fail_after(TIMEOUT):
        session = await alice.open()
        listed = await alice.request(session, "tools/list", {})
        assert [t["name"] for t in listed["result"]["tools"]] == ["vault__connect_account"]
        await store.credentials.save(
            str(uuid.uuid4()), Binding(org, "vault", "user", "alice"), kind="header",
            secret={"X-Api-Key": ALICE_KEY}, header_names=("X-Api-Key",), oauth_client_id=None,
            expires_at=None, now=utc_now(),
        )  # fmt: skip
        answer = await alice.call(session, "vault__whoami", {})
    assert answer["error"]["code"] == -32602 and "Unknown tool" in answer["error"]["message"], answer
    assert not any(h.get("x-api-key") == ALICE_KEY for h in world.upstream.seen)  # never forwarded
