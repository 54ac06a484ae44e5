"""The OAuth test servers of `tests.oauth`, driven end to end by a plain HTTP client (no gateway)."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from pydantic import AnyUrl

from tests.oauth import AuthServer, ProtectedUpstream, consent, running_auth_server, serve_protected_upstream

TIMEOUT = 20
REDIRECT_URI = "http://127.0.0.1:9/callback"  # never contacted: the tests read the redirect themselves
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"},
    },
}


@dataclass
class Registered:
    client_id: str
    client_secret: str | None
    method: str

    def token_request(self, **fields: str) -> dict[str, Any]:
        """Keyword arguments for `httpx2.AsyncClient.post` to the token endpoint, authenticated."""
        if self.method == "client_secret_basic":
            assert self.client_secret is not None
            return {"data": fields, "auth": httpx2.BasicAuth(self.client_id, self.client_secret)}
        data = {**fields, "client_id": self.client_id}
        if self.method == "client_secret_post":
            assert self.client_secret is not None
            data["client_secret"] = self.client_secret
        return {"data": data}


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient() as client:
        yield client


async def register(http: httpx2.AsyncClient, auth: AuthServer, method: str = "none") -> Registered:
    metadata = (await http.get(auth.metadata_url)).json()
    response = await http.post(
        metadata["registration_endpoint"],
        json={
            "redirect_uris": [REDIRECT_URI],
            "token_endpoint_auth_method": method,
            "grant_types": ["authorization_code", "refresh_token"],
            "client_name": "test client",
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return Registered(body["client_id"], body.get("client_secret"), method)


async def authorize(
    http: httpx2.AsyncClient, auth: AuthServer, client: Registered, resource: str, user: str
) -> tuple[str, str]:
    """Authorize `client` for `resource` as `user`; return the code and its PKCE verifier."""
    verifier = secrets.token_urlsafe(48)
    state = secrets.token_urlsafe(8)
    response = await http.get(
        f"{auth.issuer}/authorize",
        params={
            "response_type": "code",
            "client_id": client.client_id,
            "redirect_uri": REDIRECT_URI,
            "code_challenge": create_s256_code_challenge(verifier),  # type: ignore[no-untyped-call]
            "code_challenge_method": "S256",
            "state": state,
            "scope": "read",
            "resource": resource,
        },
    )
    assert response.status_code == 302, response.text
    consent_url = response.headers["location"]
    assert consent_url.startswith(f"{auth.issuer}/consent?")
    redirect = await consent(http, consent_url, user)
    assert redirect.status_code == 302, redirect.text
    location = redirect.headers["location"]
    assert location.startswith(f"{REDIRECT_URI}?")
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == [state]
    assert query["iss"] == [auth.issuer]
    return query["code"][0], verifier


async def obtain_tokens(
    http: httpx2.AsyncClient, auth: AuthServer, resource: str, user: str, method: str = "none"
) -> tuple[Registered, dict[str, Any]]:
    client = await register(http, auth, method)
    code, verifier = await authorize(http, auth, client, resource, user)
    response = await http.post(
        auth.token_endpoint,
        **client.token_request(
            grant_type="authorization_code",
            code=code,
            redirect_uri=REDIRECT_URI,
            code_verifier=verifier,
            resource=resource,
        ),
    )
    assert response.status_code == 200, response.text
    return client, response.json()


async def refresh(
    http: httpx2.AsyncClient, auth: AuthServer, client: Registered, token: str
) -> httpx2.Response:
    return await http.post(
        auth.token_endpoint, **client.token_request(grant_type="refresh_token", refresh_token=token)
    )


async def initialize_status(http: httpx2.AsyncClient, upstream: ProtectedUpstream, token: str) -> int:
    headers = {"accept": "application/json, text/event-stream", "authorization": f"Bearer {token}"}
    response = await http.post(upstream.url, json=INITIALIZE, headers=headers)
    return response.status_code


async def whoami(upstream: ProtectedUpstream, token: str) -> str:
    async with (
        httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(upstream.url, http_client=http)) as client,
    ):
        result = await client.call_tool("whoami", {})
    text: str = result.content[0].model_dump()["text"]
    return text


async def test_discovery_runs_from_the_upstreams_401_to_the_as_metadata(http: httpx2.AsyncClient) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running_auth_server() as auth, serve_protected_upstream(auth) as upstream:
            refused = await http.post(upstream.url, json=INITIALIZE)
            assert refused.status_code == 401
            challenge = refused.headers["www-authenticate"]
            assert challenge.startswith("Bearer ")
            match = re.search(r'resource_metadata="([^"]+)"', challenge)
            assert match is not None and match.group(1) == upstream.resource_metadata_url

            prm = (await http.get(upstream.resource_metadata_url)).json()
            assert prm["resource"] == upstream.url
            assert prm["authorization_servers"] == [auth.issuer]
            assert prm["scopes_supported"] == ["read"]

            metadata = (
                await http.get(f"{prm['authorization_servers'][0]}/.well-known/oauth-authorization-server")
            ).json()
            assert metadata["issuer"] == auth.issuer
            paths = {
                "authorization": "authorize",
                "token": "token",
                "registration": "register",
                "revocation": "revoke",
            }
            for endpoint, path in paths.items():
                assert metadata[f"{endpoint}_endpoint"] == f"{auth.issuer}/{path}"
            assert metadata["code_challenge_methods_supported"] == ["S256"]
            assert set(metadata["scopes_supported"]) >= {"read"}
            assert upstream.seen_authorizations == []

        async with running_auth_server(advertise_pkce=False) as quiet:
            metadata = (await http.get(quiet.metadata_url)).json()
            assert "code_challenge_methods_supported" not in metadata


@pytest.mark.parametrize("method", ["none", "client_secret_post", "client_secret_basic"])
async def test_a_consented_token_calls_whoami_as_that_user(http: httpx2.AsyncClient, method: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running_auth_server() as auth, serve_protected_upstream(auth) as upstream:
            _, tokens = await obtain_tokens(http, auth, upstream.url, "alice", method)
            assert auth.registrations == 1
            assert tokens["token_type"].lower() == "bearer"
            assert tokens["expires_in"] == auth.access_ttl_s
            assert auth.token_users() == {tokens["access_token"]: "alice"}

            assert await whoami(upstream, tokens["access_token"]) == "alice"
            assert set(upstream.seen_authorizations) == {f"Bearer {tokens['access_token']}"}


async def test_pkce_and_the_resource_are_enforced_at_the_token_endpoint(http: httpx2.AsyncClient) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running_auth_server() as auth, serve_protected_upstream(auth) as upstream:
            client = await register(http, auth)
            base = {"grant_type": "authorization_code", "redirect_uri": REDIRECT_URI}

            code, verifier = await authorize(http, auth, client, upstream.url, "alice")
            wrong_verifier = await http.post(
                auth.token_endpoint,
                **client.token_request(
                    **base, code=code, code_verifier=verifier + "x", resource=upstream.url
                ),
            )
            assert (wrong_verifier.status_code, wrong_verifier.json()["error"]) == (400, "invalid_grant")

            code, verifier = await authorize(http, auth, client, upstream.url, "alice")
            other = await http.post(
                auth.token_endpoint,
                **client.token_request(
                    **base, code=code, code_verifier=verifier, resource=f"{upstream.url}/x"
                ),
            )
            assert (other.status_code, other.json()["error"]) == (400, "invalid_target")

            no_challenge = await http.get(
                f"{auth.issuer}/authorize",
                params={"response_type": "code", "client_id": client.client_id, "redirect_uri": REDIRECT_URI},
            )
            assert no_challenge.status_code == 302
            assert parse_qs(urlsplit(no_challenge.headers["location"]).query)["error"] == ["invalid_request"]


async def test_a_token_for_another_resource_is_refused(http: httpx2.AsyncClient) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            running_auth_server() as auth,
            serve_protected_upstream(auth) as mine,
            serve_protected_upstream(auth) as theirs,
        ):
            _, tokens = await obtain_tokens(http, auth, theirs.url, "alice")
            assert await initialize_status(http, theirs, tokens["access_token"]) == 200
            assert await initialize_status(http, mine, tokens["access_token"]) == 401
            assert await initialize_status(http, mine, "not-a-token") == 401


async def test_expiry_refresh_and_revocation(http: httpx2.AsyncClient) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running_auth_server() as auth, serve_protected_upstream(auth) as upstream:
            client, tokens = await obtain_tokens(http, auth, upstream.url, "alice")
            assert await initialize_status(http, upstream, tokens["access_token"]) == 200

            auth.expire_access_tokens()
            assert await initialize_status(http, upstream, tokens["access_token"]) == 401
            assert auth.token_users() == {}

            refreshed = await refresh(http, auth, client, tokens["refresh_token"])
            assert refreshed.status_code == 200, refreshed.text
            new = refreshed.json()
            assert auth.refreshes == 1
            assert await whoami(upstream, new["access_token"]) == "alice"
            # Rotation: the refresh token just used is spent.
            assert new["refresh_token"] != tokens["refresh_token"]
            spent = await refresh(http, auth, client, tokens["refresh_token"])
            assert (spent.status_code, spent.json()["error"]) == (400, "invalid_grant")

            auth.fail_token_endpoint_with = 503
            assert (await refresh(http, auth, client, new["refresh_token"])).status_code == 503
            auth.fail_token_endpoint_with = None

            auth.revoke_refresh_tokens()
            revoked = await refresh(http, auth, client, new["refresh_token"])
            assert (revoked.status_code, revoked.json()["error"]) == (400, "invalid_grant")
            assert auth.refreshes == 1


class _MemoryTokens:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


async def test_the_sdks_own_oauth_client_gets_through(http: httpx2.AsyncClient) -> None:
    """An independent OAuth client (the SDK's) interoperates: discovery, DCR, RFC 9207 `iss`, resource."""
    callback: list[str] = []

    async def redirect_handler(authorization_url: str) -> None:
        to_consent = await http.get(authorization_url)
        assert to_consent.status_code == 302, to_consent.text
        callback.append((await consent(http, to_consent.headers["location"], "bob")).headers["location"])

    async def callback_handler() -> AuthorizationCodeResult:
        query = parse_qs(urlsplit(callback.pop()).query)
        return AuthorizationCodeResult(code=query["code"][0], state=query["state"][0], iss=query["iss"][0])

    with anyio.fail_after(TIMEOUT):
        async with running_auth_server() as auth, serve_protected_upstream(auth) as upstream:
            oauth = OAuthClientProvider(
                upstream.url,
                OAuthClientMetadata(redirect_uris=[AnyUrl(REDIRECT_URI)], scope="read"),
                _MemoryTokens(),
                redirect_handler=redirect_handler,
                callback_handler=callback_handler,
            )
            async with (
                httpx2.AsyncClient(auth=oauth) as authed,
                Client(streamable_http_client(upstream.url, http_client=authed)) as client,
            ):
                result = await client.call_tool("whoami", {})
            assert result.content[0].model_dump()["text"] == "bob"
            assert auth.registrations == 1
