"""Item 1 and 2 of issue 13: with host sign-in on, a host that sends no credential learns where
to sign in (RFC 9728), and the authorization server describes itself (RFC 8414, and at the
OpenID discovery path some hosts try first)."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx2

from tests.gateway.signin.browser import TIMEOUT, signin_gateway
from tests.harness import demo_stdio_yaml, serve_gateway, write_config

PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
ACCEPT = {"accept": "application/json, text/event-stream"}


async def test_a_request_without_a_credential_is_told_where_each_mcp_url_signs_in(tmp_path: Path) -> None:
    async with signin_gateway(tmp_path) as gateway, httpx2.AsyncClient() as http:
        org = await gateway.running.gateway.store.ensure_organisation("default")
        with anyio.fail_after(TIMEOUT):
            for path in ("/mcp", f"/mcp/{org.id}"):
                refused = await http.post(gateway.base_url + path, json=PING, headers=ACCEPT)
                assert refused.status_code == 401
                where = f"{gateway.base_url}/.well-known/oauth-protected-resource{path}"
                assert (
                    refused.headers["www-authenticate"] == f'Bearer resource_metadata="{where}", scope="mcp"'
                )
                assert (
                    "send your API key as x-api-key or Authorization: Bearer"
                    in refused.json()["error"]["message"]
                )
                metadata = await http.get(where)
                assert metadata.status_code == 200
                assert metadata.json()["resource"] == gateway.base_url + path
                assert metadata.json()["authorization_servers"] == [gateway.base_url]


async def test_the_authorization_server_metadata_offers_pkce_s256_public_clients_and_iss(
    tmp_path: Path,
) -> None:
    async with signin_gateway(tmp_path) as gateway, httpx2.AsyncClient() as http:
        with anyio.fail_after(TIMEOUT):
            oauth = await http.get(f"{gateway.base_url}/.well-known/oauth-authorization-server")
            openid = await http.get(f"{gateway.base_url}/.well-known/openid-configuration")
    assert oauth.status_code == openid.status_code == 200
    metadata = oauth.json()
    assert openid.json() == metadata
    assert metadata["issuer"] == gateway.base_url
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert "none" in metadata["token_endpoint_auth_methods_supported"]
    assert metadata["authorization_response_iss_parameter_supported"] is True
    assert metadata["client_id_metadata_document_supported"] is True
    assert metadata["grant_types_supported"] == ["authorization_code", "refresh_token"]
    for endpoint in (
        "authorization_endpoint",
        "token_endpoint",
        "registration_endpoint",
        "revocation_endpoint",
    ):
        assert metadata[endpoint].startswith(gateway.base_url + "/signin/")


async def test_without_host_sign_in_nothing_invites_an_oauth_flow(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, f"database: ./gw.db\nauth: {{required: true}}\nupstreams:{demo_stdio_yaml()}\n"
    )
    async with serve_gateway(config) as gateway, httpx2.AsyncClient() as http:
        with anyio.fail_after(TIMEOUT):
            refused = await http.post(gateway.url, json=PING, headers=ACCEPT)
            metadata = await http.get(f"{gateway.base_url}/.well-known/oauth-protected-resource/mcp")
            server = await http.get(f"{gateway.base_url}/.well-known/oauth-authorization-server")
    assert refused.status_code == 401
    assert not refused.headers["www-authenticate"].lower().startswith("bearer")
    assert metadata.status_code == server.status_code == 404


async def test_an_mcp_url_of_any_spelling_is_refused_with_a_challenge_a_host_can_read(tmp_path: Path) -> None:
    # Found by the sign-in fuzzers (issue 23): `/mcp/%00` put a NUL into the challenge's header,
    # which the server cannot send: the host got a dropped connection instead of its 401.
    async with signin_gateway(tmp_path) as gateway, httpx2.AsyncClient() as http:
        with anyio.fail_after(TIMEOUT):
            for path in ("/mcp/%00", "/mcp/%0d%0aset-cookie:x", '/mcp/a"b', "/mcp/%C3%A9"):
                refused = await http.post(gateway.base_url + path, json=PING, headers=ACCEPT)
                assert refused.status_code == 401, path
                challenge = refused.headers["www-authenticate"]
                where = challenge.split('resource_metadata="')[1].split('"')[0]
                assert where.startswith(f"{gateway.base_url}/.well-known/oauth-protected-resource/mcp/")
                assert (await http.get(where)).status_code == 200
