"""Per-user OAuth for an upstream, against a real authorization server and an upstream that
accepts only tokens minted for its own audience. No browser: the tests follow the redirects
and submit the forms with a plain HTTP client, whose cookie jar is the browser's."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import McpClient
from tests.connecting import (
    confirm,
    connect_url,
    form_of,
    leaks,
    people,
    serve_gateway_at_own_url,
    text_of,
)
from tests.harness import RunningGateway, base_url_of, listening_socket
from tests.oauth import AuthServer, ProtectedUpstream, consent, running_auth_server, serve_protected_upstream

TIMEOUT = 30.0


@dataclass
class World:
    gateway: RunningGateway
    auth: AuthServer
    upstream: ProtectedUpstream
    http: httpx2.AsyncClient
    alice: McpClient
    bob: McpClient
    admin: dict[str, str]  # an admin key bound to alice
    other_admin: dict[str, str]  # an admin key bound to nobody
    directory: Path

    @property
    def api(self) -> str:
        return f"{self.gateway.base_url}/api/mcp/sessions"


@pytest.fixture
async def world(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[World]:
    caplog.set_level(logging.DEBUG)
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
            org = await gateway.gateway.store.ensure_organisation("default")
            other = await gateway.gateway.store.create_api_key(org.id, is_admin=True)
            yield World(
                gateway, auth, upstream, http, users.alice, users.bob, users.admin,
                {"authorization": f"Bearer {other.secret}"}, tmp_path,
            )  # fmt: skip


async def authorise(world: World, url: str, user: str) -> httpx2.Response:
    """Open a connect URL as a browser would, confirm, consent as `user`, and land on the callback."""
    to_server = await confirm(world.http, url)
    assert to_server.status_code == 303, to_server.text
    to_consent = await world.http.get(to_server.headers["location"], follow_redirects=False)
    assert to_consent.status_code == 302, to_consent.text
    back = await consent(world.http, to_consent.headers["location"], user)
    assert back.status_code == 302
    return await world.http.get(back.headers["location"], follow_redirects=False)


async def rows(world: World) -> list[dict[str, Any]]:
    listed = await world.http.get(world.api, headers=world.admin)
    assert listed.status_code == 200, listed.text
    found: list[dict[str, Any]] = listed.json()["sessions"]
    return found


def refreshes(world: World) -> dict[str, float]:
    """The gateway's `mcpgw_credential_refreshes_total` for upstream gh, by result."""
    exposition = world.gateway.gateway.metrics.exposition().decode()
    return {
        sample.labels["result"]: sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "mcpgw_credential_refreshes_total" and sample.labels["upstream"] == "gh"
    }


async def test_a_user_connects_through_consent_and_calls_as_themselves(world: World) -> None:
    with anyio.fail_after(TIMEOUT):
        session = await world.alice.open()
        url = connect_url(await world.alice.call(session, "gh__whoami", {}))

        to_server = await confirm(world.http, url)
        authorize = parse_qs(urlsplit(to_server.headers["location"]).query)
        assert authorize["code_challenge_method"] == ["S256"] and authorize["resource"] == [
            world.upstream.url
        ]
        assert authorize["scope"] == ["read"] and authorize["state"][0]

        callback = await authorise(world, url, "alice@example")
        assert callback.status_code == 200, callback.text
        assert text_of(await world.alice.call(session, "gh__whoami", {})) == "alice@example"
        assert world.auth.registrations == 1  # registered once (RFC 7591), kept for next time

        replay = await world.http.get(str(callback.request.url), follow_redirects=False)
        assert replay.status_code == 400  # a state is claimed once

        assert connect_url(await world.bob.call(await world.bob.open(), "gh__whoami", {})) != url
        host_keys = {world.alice.key, world.bob.key}
        assert world.upstream.seen_authorizations
        assert not any(key in value for value in world.upstream.seen_authorizations for key in host_keys)


async def test_a_connect_link_names_whose_account_it_connects_before_leaving_the_gateway(
    world: World,
) -> None:
    """Bob's link, sent to alice: the page says the account will be bob's and asks her to
    confirm; nothing reaches the authorization server before a confirmation from this browser."""
    with anyio.fail_after(TIMEOUT):
        url = connect_url(await world.bob.call(await world.bob.open(), "gh__whoami", {}))
        page = await world.http.get(url, follow_redirects=False)
        assert page.status_code == 200, page.text
        assert "user <strong>bob</strong>" in page.text and "<strong>default</strong>" in page.text
        assert "<strong>gh</strong>" in page.text and "If you are not bob" in page.text
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        confirmation = form_of(page)
        async with httpx2.AsyncClient(timeout=TIMEOUT) as elsewhere:  # a forged cross-site post
            forged = await elsewhere.post(confirmation.action, data=confirmation.hidden)
        assert forged.status_code == 403
        assert not world.auth.pending  # no authorization request was made
        to_server = await confirm(world.http, url)
        assert to_server.status_code == 303
        assert to_server.headers["location"].startswith(f"{world.auth.issuer}/authorize?")
        assert "httponly" in to_server.headers["set-cookie"].lower()
        assert "samesite=lax" in to_server.headers["set-cookie"].lower()


async def test_a_callback_in_another_browser_than_the_one_that_confirmed_connects_nothing(
    world: World,
) -> None:
    """Bob confirms his own link, then hands the authorization server's page on to alice: her
    consent brings her browser, which never confirmed bob's link, to the callback. It is refused,
    the flow is spent (bob's browser cannot finish it either), and no token is ever obtained."""
    with anyio.fail_after(TIMEOUT):
        session = await world.bob.open()
        url = connect_url(await world.bob.call(session, "gh__whoami", {}))
        to_server = await confirm(world.http, url)  # bob's browser
        async with httpx2.AsyncClient(timeout=TIMEOUT) as alices_browser:
            to_consent = await alices_browser.get(to_server.headers["location"], follow_redirects=False)
            back = await consent(alices_browser, to_consent.headers["location"], "alice@example")
            refused = await alices_browser.get(back.headers["location"], follow_redirects=False)
        assert refused.status_code == 403 and "another browser" in refused.text, refused.text
        assert (await world.http.get(back.headers["location"], follow_redirects=False)).status_code == 400
        assert world.auth.issued == []  # the code was never exchanged
        assert [r["kind"] for r in await rows(world)] == []
        again = connect_url(await world.bob.call(session, "gh__whoami", {}))
        assert again != url
        assert (await authorise(world, again, "bob@example")).status_code == 200
        assert text_of(await world.bob.call(session, "gh__whoami", {})) == "bob@example"


async def test_an_expired_token_is_refreshed_once_for_concurrent_calls(world: World) -> None:
    with anyio.fail_after(TIMEOUT):
        session = await world.alice.open()
        url = connect_url(await world.alice.call(session, "gh__whoami", {}))
        await authorise(world, url, "alice@example")
        world.auth.expire_access_tokens()
        answers: list[str] = []

        async def call() -> None:
            answers.append(text_of(await world.alice.call(session, "gh__whoami", {})))

        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(call)
        assert answers == ["alice@example"] * 5
        # Refresh tokens rotate here, so a second refresh with the same token would have failed.
        assert world.auth.refreshes == 1
        assert refreshes(world) == {"ok": 1}
        [row] = await rows(world)
        assert row["status"] == "active" and row["last_refreshed_at"]


async def test_a_refused_refresh_needs_reauth_and_reauth_makes_it_active_again(world: World) -> None:
    with anyio.fail_after(TIMEOUT):
        session = await world.alice.open()
        await authorise(
            world, connect_url(await world.alice.call(session, "gh__whoami", {})), "alice@example"
        )

        world.auth.fail_token_endpoint_with = 503  # an outage is not the user's problem
        world.auth.expire_access_tokens()
        failed = await world.alice.call(session, "gh__whoami", {})
        assert failed["error"]["code"] == -32001 and "refresh" in failed["error"]["message"]
        assert [r["status"] for r in await rows(world)] == ["active"]

        world.auth.fail_token_endpoint_with = None
        world.auth.revoke_refresh_tokens()
        again = connect_url(await world.alice.call(session, "gh__whoami", {}))
        [row] = await rows(world)
        assert (row["status"], row["kind"], row["can_reauth"]) == ("needs_reauth", "token", True)
        counted = refreshes(world)
        assert counted["failed"] >= 1 and counted["refused"] == 1 and "ok" not in counted

        refused = await world.http.post(f"{world.api}/{row['id']}/reauth", headers=world.other_admin)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "not_bound_user"
        started = await world.http.post(f"{world.api}/{row['id']}/reauth", headers=world.admin)
        assert started.status_code == 200, started.text
        reauth = started.json()
        assert set(reauth) == {"authorize_url", "session_id"} and reauth["authorize_url"] != again

        assert (await authorise(world, reauth["authorize_url"], "alice@example")).status_code == 200
        assert [r["status"] for r in await rows(world)] == ["active"]
        assert text_of(await world.alice.call(session, "gh__whoami", {})) == "alice@example"


async def test_deleting_a_credential_asks_the_user_to_connect_again(world: World) -> None:
    with anyio.fail_after(TIMEOUT):
        session = await world.alice.open()
        await authorise(
            world, connect_url(await world.alice.call(session, "gh__whoami", {})), "alice@example"
        )
        [row] = await rows(world)
        assert (await world.http.delete(f"{world.api}/{row['id']}", headers=world.admin)).status_code == 204
        assert (await world.http.delete(f"{world.api}/{row['id']}", headers=world.admin)).status_code == 404
        assert connect_url(await world.alice.call(session, "gh__whoami", {}))


async def test_no_token_is_kept_or_logged_in_clear(world: World, caplog: pytest.LogCaptureFixture) -> None:
    with anyio.fail_after(TIMEOUT):
        session = await world.alice.open()
        await authorise(
            world, connect_url(await world.alice.call(session, "gh__whoami", {})), "alice@example"
        )
        world.auth.expire_access_tokens()
        assert text_of(await world.alice.call(session, "gh__whoami", {})) == "alice@example"
    assert len(world.auth.issued) >= 3
    assert leaks(world.directory, caplog.text, world.auth.issued) == []


def keyless_body(upstream_url: str, auth: str = "{kind: oauth}") -> str:
    """A key-less gateway in front of one OAuth upstream `gh`."""
    return f"""
auth: {{required: false}}
upstreams:
  - {{name: gh, transport: http, url: "{upstream_url}", auth: {auth}}}
"""


async def connect_and_whoami(world: World, user: str) -> str:
    """A key-less host's first call, the whole consent as `user`, and the call again."""
    session = await world.alice.open()
    url = connect_url(await world.alice.call(session, "gh__whoami", {}))
    assert (await authorise(world, url, user)).status_code == 200
    return text_of(await world.alice.call(session, "gh__whoami", {}))


def keyless_world(
    gateway: RunningGateway, auth: AuthServer, upstream: ProtectedUpstream, http: httpx2.AsyncClient
) -> World:
    host = McpClient(http, gateway.url, "")
    return World(gateway, auth, upstream, http, host, host, {}, {}, Path())


async def test_an_authorization_server_without_pkce_is_refused(tmp_path: Path) -> None:
    async with (
        running_auth_server(advertise_pkce=False) as auth,
        serve_protected_upstream(auth) as upstream,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
        serve_gateway_at_own_url(tmp_path, keyless_body(upstream.url)) as gateway,
    ):
        with anyio.fail_after(TIMEOUT):
            client = McpClient(http, gateway.url, "")
            url = connect_url(await client.call(await client.open(), "gh__whoami", {}))
            page = await http.get(url, follow_redirects=False)
            assert page.status_code == 502 and "PKCE" in page.text
            assert auth.registrations == 0


async def test_a_configured_confidential_client_is_used_instead_of_registering(tmp_path: Path) -> None:
    async with (
        running_auth_server() as auth,
        serve_protected_upstream(auth) as upstream,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
    ):
        sock = listening_socket()
        metadata = (await http.get(auth.metadata_url)).json()
        registered = await http.post(
            metadata["registration_endpoint"],
            json={"redirect_uris": [f"{base_url_of(sock)}/oauth/callback"], "client_name": "by hand",
                  "token_endpoint_auth_method": "client_secret_basic"},
        )  # fmt: skip
        client = registered.json()
        configured = (
            f'{{kind: oauth, client_id: "{client["client_id"]}", client_secret: "{client["client_secret"]}"}}'
        )
        async with serve_gateway_at_own_url(
            tmp_path, keyless_body(upstream.url, configured), sock
        ) as gateway:
            with anyio.fail_after(TIMEOUT):
                assert (
                    await connect_and_whoami(keyless_world(gateway, auth, upstream, http), "carol@example")
                    == "carol@example"
                )
        assert auth.registrations == 1  # only the one made by hand above


async def test_a_server_that_reads_client_metadata_documents_gets_the_gateways_own(tmp_path: Path) -> None:
    async with (
        running_auth_server(metadata_documents=True) as auth,
        serve_protected_upstream(auth) as upstream,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
        serve_gateway_at_own_url(tmp_path, keyless_body(upstream.url)) as gateway,
    ):
        with anyio.fail_after(TIMEOUT):
            assert (
                await connect_and_whoami(keyless_world(gateway, auth, upstream, http), "dana@example")
                == "dana@example"
            )
            document = f"{gateway.base_url}/oauth/client-metadata.json"
            assert auth.documents_fetched == [document]  # its URL is its client id
            assert (await http.get(document)).json()["redirect_uris"] == [
                f"{gateway.base_url}/oauth/callback"
            ]
        assert auth.registrations == 0  # nothing registered: the document is the client


async def test_an_upstream_whose_resource_is_its_origin_is_connected_and_called(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # RFC 9728 3.1 / MCP authorization: metadata at the root well-known path may name the origin
    # as the resource (the gateway used to demand the MCP URL itself, and the connect page said 502).
    async with (
        running_auth_server() as auth,
        serve_protected_upstream(auth, resource_at_origin=True) as upstream,
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
            with anyio.fail_after(TIMEOUT):
                session = await users.alice.open()
                url = connect_url(await users.alice.call(session, "gh__whoami", {}))
                to_server = await confirm(http, url)
                assert to_server.status_code == 303, to_server.text
                authorize = parse_qs(urlsplit(to_server.headers["location"]).query)
                assert authorize["resource"] == [upstream.url.removesuffix("mcp")]
                to_consent = await http.get(to_server.headers["location"], follow_redirects=False)
                back = await consent(http, to_consent.headers["location"], "alice@example")
                callback = await http.get(back.headers["location"], follow_redirects=False)
                assert callback.status_code == 200, callback.text
                assert text_of(await users.alice.call(session, "gh__whoami", {})) == "alice@example"
