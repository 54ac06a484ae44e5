"""Item 3 of issue 13: the ways a host's client becomes known (pre-registered in the config,
RFC 7591 registration), redirect URIs matched exactly but for a loopback port (RFC 8252), a
registration limit per address, and a host the gateway forgot registering again."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import anyio
import httpx2

from store import utc_now
from tests.gateway.signin.browser import (
    REDIRECT_URI,
    TIMEOUT,
    Registered,
    create_key,
    mcp_status,
    redeem,
    register,
    sign_in,
    signin_gateway,
)

CONFIGURED = """  clients:
    - client_id: team-editor
      client_name: Our editor
      client_secret: s3cret-from-the-environment
      redirect_uris: [http://127.0.0.1/callback]
"""


async def test_a_client_listed_in_the_config_signs_in_on_any_loopback_port_with_its_secret(
    tmp_path: Path,
) -> None:
    async with signin_gateway(tmp_path, CONFIGURED) as gateway, httpx2.AsyncClient() as http:
        key = await create_key(gateway, "ada")
        with anyio.fail_after(TIMEOUT):
            # The registered URI has no port; the host listens on port 9 (REDIRECT_URI).
            code, verifier = await sign_in(http, gateway.base_url, "team-editor", key)
            without = await redeem(http, gateway.base_url, Registered("team-editor", None), code, verifier)
            code, verifier = await sign_in(http, gateway.base_url, "team-editor", key)
            good = Registered("team-editor", "s3cret-from-the-environment")
            tokens = await redeem(http, gateway.base_url, good, code, verifier)
    assert without.status_code == 401 and without.json()["error"] == "invalid_client"
    assert tokens.status_code == 200, tokens.text
    assert tokens.json()["access_token"].startswith("mga_")


async def test_a_host_the_gateway_forgot_registers_again_and_signs_in(tmp_path: Path) -> None:
    async with signin_gateway(tmp_path) as gateway, httpx2.AsyncClient() as http:
        key = await create_key(gateway, "ada")
        store = gateway.running.gateway.store.signin
        with anyio.fail_after(TIMEOUT):
            old = await register(http, gateway.base_url)
            # Unused for longer than unused_client_ttl_s: the gateway forgets the client.
            assert await store.prune(utc_now(), utc_now() + timedelta(days=1)) >= 1
            forgotten = await http.post(
                f"{gateway.base_url}/signin/token",
                data={"grant_type": "refresh_token", "refresh_token": "mgr_x", "client_id": old.client_id},
            )
            again = await register(http, gateway.base_url)
            code, verifier = await sign_in(http, gateway.base_url, again.client_id, key)
            tokens = await redeem(http, gateway.base_url, again, code, verifier)
    assert forgotten.status_code == 401 and forgotten.json()["error"] == "invalid_client"
    assert tokens.status_code == 200


async def test_registrations_past_the_hourly_limit_of_an_address_are_refused_with_retry_after(
    tmp_path: Path,
) -> None:
    async with (
        signin_gateway(tmp_path, "  registrations_per_hour: 2\n") as gateway,
        httpx2.AsyncClient() as http,
    ):
        body = {"redirect_uris": [REDIRECT_URI]}
        with anyio.fail_after(TIMEOUT):
            answers = [await http.post(f"{gateway.base_url}/signin/register", json=body) for _ in range(3)]
    assert [a.status_code for a in answers] == [201, 201, 429]
    assert int(answers[2].headers["retry-after"]) > 0


async def test_a_registered_secret_is_kept_only_as_its_hash(tmp_path: Path) -> None:
    async with signin_gateway(tmp_path) as gateway, httpx2.AsyncClient() as http:
        with anyio.fail_after(TIMEOUT):
            client = await register(http, gateway.base_url, token_endpoint_auth_method="client_secret_post")
        database = gateway.running.gateway.config.database
        files = [p for p in database.parent.iterdir() if p.name.startswith(database.name)]  # with -wal
        assert client.client_secret is not None
        assert all(client.client_secret.encode() not in p.read_bytes() for p in files)


async def test_a_host_registering_with_a_scope_of_its_own_still_registers_and_gets_the_mcp_scope(
    tmp_path: Path,
) -> None:
    # claude.ai registers with a scope of its own naming; RFC 7591 section 2 lets the server
    # replace requested metadata rather than refuse the registration.
    async with signin_gateway(tmp_path) as gateway, httpx2.AsyncClient() as http:
        key = await create_key(gateway, "ada")
        with anyio.fail_after(TIMEOUT):
            client = await register(http, gateway.base_url, scope="claudeai")
            code, verifier = await sign_in(http, gateway.base_url, client.client_id, key, scope="claudeai")
            tokens = await redeem(http, gateway.base_url, client, code, verifier)
    assert tokens.status_code == 200 and tokens.json()["scope"] == "mcp"


async def test_a_public_client_revokes_its_sign_in_with_its_client_id_alone(tmp_path: Path) -> None:
    """RFC 7009 section 2.1: a public client (token_endpoint_auth_method none) sends only its
    client_id; the TypeScript SDK's hosts register as such."""
    async with signin_gateway(tmp_path) as gateway, httpx2.AsyncClient() as http:
        key = await create_key(gateway, "ada")
        with anyio.fail_after(TIMEOUT):
            public = await register(http, gateway.base_url, token_endpoint_auth_method="none")
            code, verifier = await sign_in(http, gateway.base_url, public.client_id, key)
            tokens = (await redeem(http, gateway.base_url, public, code, verifier)).json()
            revoked = await http.post(
                f"{gateway.base_url}/signin/revoke",
                data={"token": tokens["refresh_token"], "client_id": public.client_id},
            )
            refreshed = await http.post(
                f"{gateway.base_url}/signin/token",
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": tokens["refresh_token"],
                    "client_id": public.client_id,
                },
            )
            refused = await mcp_status(http, gateway, tokens["access_token"])
    assert public.client_secret is None
    assert revoked.status_code == 200, revoked.text
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
    assert refused == 401


async def test_a_client_authenticating_with_basic_redeems_a_code_without_client_id_in_the_body(
    tmp_path: Path,
) -> None:
    # RFC 6749 section 2.3.1: with client_secret_basic the client is identified by the header;
    # its body need not (and per section 4.1.3 of a confidential client, does not) repeat it.
    async with signin_gateway(tmp_path) as gateway, httpx2.AsyncClient() as http:
        key = await create_key(gateway, "ada")
        with anyio.fail_after(TIMEOUT):
            client = await register(http, gateway.base_url, token_endpoint_auth_method="client_secret_basic")
            assert client.client_secret is not None
            code, verifier = await sign_in(http, gateway.base_url, client.client_id, key)
            data = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier}
            data["redirect_uri"] = REDIRECT_URI
            basic = httpx2.BasicAuth(client.client_id, client.client_secret)
            tokens = await http.post(f"{gateway.base_url}/signin/token", data=data, auth=basic)
            wrong = httpx2.BasicAuth(client.client_id, "not-the-secret")
            code, verifier = await sign_in(http, gateway.base_url, client.client_id, key)
            refused = await http.post(
                f"{gateway.base_url}/signin/token",
                data={**data, "code": code, "code_verifier": verifier},
                auth=wrong,
            )
    assert tokens.status_code == 200, tokens.text
    assert tokens.json()["access_token"].startswith("mga_")
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
