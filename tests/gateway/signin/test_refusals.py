"""Every request the authorization server refuses gets the RFC's error, never a 500, and never a
redirect to a URI the client did not register (issue 13, item 7). One gateway serves every case;
each case registers its own client and signs in afresh where it needs a code or tokens."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest

from tests.gateway.signin.browser import (
    REDIRECT_URI,
    TIMEOUT,
    Registered,
    SignInGateway,
    authorize_params,
    create_key,
    pkce,
    redeem,
    register,
    sign_in,
    signin_gateway,
)


@dataclass
class Ctx:
    gateway: SignInGateway
    http: httpx2.AsyncClient
    key: str

    @property
    def base(self) -> str:
        return self.gateway.base_url

    async def client(self, **metadata: object) -> Registered:
        return await register(self.http, self.base, **metadata)

    async def code(self, client: Registered, **extra: str) -> tuple[str, str]:
        return await sign_in(self.http, self.base, client.client_id, self.key, **extra)

    async def tokens(self, client: Registered) -> dict[str, str]:
        code, verifier = await self.code(client)
        answer = await redeem(self.http, self.base, client, code, verifier)
        assert answer.status_code == 200, answer.text
        tokens: dict[str, str] = answer.json()
        return tokens

    async def authorize(self, **params: str) -> httpx2.Response:
        return await self.http.get(f"{self.base}/signin/authorize", params=params)

    async def token(self, data: dict[str, str], **kwargs: object) -> httpx2.Response:
        return await self.http.post(f"{self.base}/signin/token", data=data, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[Ctx]:
    async with signin_gateway(tmp_path) as gateway, httpx2.AsyncClient(follow_redirects=False) as http:
        yield Ctx(gateway, http, await create_key(gateway, "ada"))


Case = Callable[[Ctx], Awaitable[httpx2.Response]]


async def unknown_client_at_authorize(c: Ctx) -> httpx2.Response:
    return await c.authorize(**authorize_params("no-such-client", pkce()[1]))


async def unregistered_redirect_uri(c: Ctx) -> httpx2.Response:
    client = await c.client()
    params = authorize_params(client.client_id, pkce()[1], redirect_uri="https://attacker.example/cb")
    return await c.authorize(**params)


async def plain_pkce(c: Ctx) -> httpx2.Response:
    client = await c.client()
    return await c.authorize(**authorize_params(client.client_id, "x" * 43, code_challenge_method="plain"))


async def no_pkce(c: Ctx) -> httpx2.Response:
    client = await c.client()
    params = authorize_params(client.client_id, "")
    del params["code_challenge"]
    return await c.authorize(**params)


async def short_challenge(c: Ctx) -> httpx2.Response:
    client = await c.client()
    return await c.authorize(**authorize_params(client.client_id, "tooshort"))


async def implicit_grant(c: Ctx) -> httpx2.Response:
    client = await c.client()
    return await c.authorize(**authorize_params(client.client_id, pkce()[1], response_type="token"))


async def another_resource_at_authorize(c: Ctx) -> httpx2.Response:
    client = await c.client()
    return await c.authorize(
        **authorize_params(client.client_id, pkce()[1], resource="https://other.example/mcp")
    )


async def unknown_client_at_token(c: Ctx) -> httpx2.Response:
    return await c.token({"grant_type": "authorization_code", "client_id": "forgotten", "code": "x"})


async def wrong_client_secret(c: Ctx) -> httpx2.Response:
    client = await c.client()
    code, verifier = await c.code(client)
    return await redeem(c.http, c.base, Registered(client.client_id, "not-the-secret"), code, verifier)


async def malformed_basic_auth(c: Ctx) -> httpx2.Response:
    client = await c.client()
    data = {"grant_type": "authorization_code", "client_id": client.client_id, "code": "x"}
    return await c.token(data, headers={"authorization": "Basic %%%"})


async def unknown_code(c: Ctx) -> httpx2.Response:
    client = await c.client()
    return await redeem(c.http, c.base, client, "mgc_not-a-code", pkce()[0])


async def wrong_verifier(c: Ctx) -> httpx2.Response:
    client = await c.client()
    code, _ = await c.code(client)
    return await redeem(c.http, c.base, client, code, pkce()[0])


async def replayed_code(c: Ctx) -> httpx2.Response:
    client = await c.client()
    code, verifier = await c.code(client)
    first = await redeem(c.http, c.base, client, code, verifier)
    assert first.status_code == 200
    replay = await redeem(c.http, c.base, client, code, verifier)
    # RFC 6749 4.1.2: the tokens the code gave are revoked too.
    ping = await c.http.post(
        c.gateway.url,
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        headers={"authorization": f"Bearer {first.json()['access_token']}", "accept": "application/json"},
    )
    assert ping.status_code == 401
    return replay


async def code_of_another_client(c: Ctx) -> httpx2.Response:
    owner, thief = await c.client(), await c.client()
    code, verifier = await c.code(owner)
    return await redeem(c.http, c.base, thief, code, verifier)


async def redirect_uri_changed_at_token(c: Ctx) -> httpx2.Response:
    client = await c.client(redirect_uris=[REDIRECT_URI, "http://127.0.0.1:9/other"])
    code, verifier = await c.code(client)
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": "http://127.0.0.1:9/other",
        "client_id": client.client_id,
        "client_secret": client.client_secret or "",
    }
    return await c.token(data)


async def reused_refresh_token(c: Ctx) -> httpx2.Response:
    client = await c.client()
    tokens = await c.tokens(client)
    data = {
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
        "client_id": client.client_id,
        "client_secret": client.client_secret or "",
    }
    rotated = await c.token(data)
    assert rotated.status_code == 200
    reuse = await c.token(data)
    # The whole family ends: the refresh token the rotation gave is refused too.
    after = await c.token({**data, "refresh_token": rotated.json()["refresh_token"]})
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"
    return reuse


async def unsupported_grant_type(c: Ctx) -> httpx2.Response:
    client = await c.client()
    return await c.token({"grant_type": "password", "client_id": client.client_id, "username": "ada"})


async def another_resource_at_token(c: Ctx) -> httpx2.Response:
    client = await c.client()
    code, verifier = await c.code(client)
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT_URI,
        "client_id": client.client_id,
        "client_secret": client.client_secret or "",
        "resource": "https://other.example/mcp",
    }
    return await c.token(data)


async def http_redirect_to_a_remote_host(c: Ctx) -> httpx2.Response:
    return await c.http.post(f"{c.base}/signin/register", json={"redirect_uris": ["http://example.com/cb"]})


async def javascript_redirect(c: Ctx) -> httpx2.Response:
    return await c.http.post(f"{c.base}/signin/register", json={"redirect_uris": ["javascript:alert(1)//x"]})


async def client_credentials_registration(c: Ctx) -> httpx2.Response:
    body = {"redirect_uris": [REDIRECT_URI], "grant_types": ["client_credentials"]}
    return await c.http.post(f"{c.base}/signin/register", json=body)


async def revoke_as_unknown_client(c: Ctx) -> httpx2.Response:
    return await c.http.post(f"{c.base}/signin/revoke", data={"token": "mga_x", "client_id": "forgotten"})


async def token_for_another_resource_at_the_endpoint(c: Ctx) -> httpx2.Response:
    client = await c.client()
    tokens = await c.tokens(client)
    org = await c.gateway.running.gateway.store.ensure_organisation("default")
    return await c.http.post(
        f"{c.gateway.url}/{org.id}",
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        headers={"authorization": f"Bearer {tokens['access_token']}", "accept": "application/json"},
    )


async def token_after_its_key_is_revoked(c: Ctx) -> httpx2.Response:
    client = await c.client()
    tokens = await c.tokens(client)
    store = c.gateway.running.gateway.store
    org = await store.ensure_organisation("default")
    (key,) = [k for k in await store.list_api_keys(org.id) if k.revoked_at is None]
    await store.revoke_api_key(key.id)
    return await c.http.post(
        c.gateway.url,
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        headers={"authorization": f"Bearer {tokens['access_token']}", "accept": "application/json"},
    )


async def token_on_the_listing_api(c: Ctx) -> httpx2.Response:
    client = await c.client()
    tokens = await c.tokens(client)
    org = await c.gateway.running.gateway.store.ensure_organisation("default")
    return await c.http.get(
        f"{c.gateway.url}/{org.id}/sessions", headers={"authorization": f"Bearer {tokens['access_token']}"}
    )


# (case, HTTP status, OAuth error, whether the refusal goes back to the client's redirect URI)
CASES: list[tuple[Case, int, str | None, bool]] = [
    (unknown_client_at_authorize, 400, "invalid_request", False),
    (unregistered_redirect_uri, 400, "invalid_request", False),
    (plain_pkce, 302, "invalid_request", True),
    (no_pkce, 302, "invalid_request", True),
    (short_challenge, 302, "invalid_request", True),
    (implicit_grant, 302, "unsupported_response_type", True),
    (another_resource_at_authorize, 302, "invalid_target", True),
    (unknown_client_at_token, 401, "invalid_client", False),
    (wrong_client_secret, 401, "invalid_client", False),
    (malformed_basic_auth, 401, "invalid_client", False),
    (unknown_code, 400, "invalid_grant", False),
    (wrong_verifier, 400, "invalid_grant", False),
    (replayed_code, 400, "invalid_grant", False),
    (code_of_another_client, 400, "invalid_grant", False),
    (redirect_uri_changed_at_token, 400, "invalid_request", False),
    (reused_refresh_token, 400, "invalid_grant", False),
    (unsupported_grant_type, 400, "unsupported_grant_type", False),
    (another_resource_at_token, 400, "invalid_target", False),
    (http_redirect_to_a_remote_host, 400, "invalid_redirect_uri", False),
    (javascript_redirect, 400, "invalid_redirect_uri", False),
    (client_credentials_registration, 400, "invalid_client_metadata", False),
    (revoke_as_unknown_client, 401, "invalid_client", False),
    (token_for_another_resource_at_the_endpoint, 401, "invalid_token", False),
    (token_after_its_key_is_revoked, 401, "invalid_token", False),
    (token_on_the_listing_api, 401, None, False),  # the listing API's own 401 (keys only there)
]


@pytest.mark.parametrize(("case", "status", "error", "redirected"), CASES, ids=[c[0].__name__ for c in CASES])
async def test_each_refused_sign_in_request_gets_the_rfc_error_and_no_open_redirect(
    ctx: Ctx, case: Case, status: int, error: str | None, redirected: bool
) -> None:
    with anyio.fail_after(TIMEOUT):
        response = await case(ctx)
    assert response.status_code == status, response.text
    location = response.headers.get("location")
    if redirected:
        assert location is not None and location.startswith(REDIRECT_URI + "?")
        answer = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        assert answer["error"] == error
        assert answer["state"] == "the-state" and answer["iss"] == ctx.base
        return
    assert location is None
    if error == "invalid_token":  # the MCP endpoint: RFC 6750's challenge, and where to sign in again
        challenge = response.headers["www-authenticate"]
        assert 'error="invalid_token"' in challenge and "resource_metadata=" in challenge
    elif error is not None:
        assert response.json()["error"] == error


async def test_a_code_asked_for_without_a_redirect_uri_is_redeemed_without_one(ctx: Ctx) -> None:
    # RFC 6749 4.1.3: the token request repeats redirect_uri only if the authorization request
    # had it; a client with one registered URI may leave it out of both.
    client = await ctx.client()
    verifier, challenge = pkce()
    params = authorize_params(client.client_id, challenge)
    del params["redirect_uri"]
    with anyio.fail_after(TIMEOUT):
        authorize = await ctx.authorize(**params)
        page = await ctx.http.get(authorize.headers["location"])
        form = dict(re.findall(r'<input type="hidden" name="(request|csrf)" value="([^"]+)">', page.text))
        answer = await ctx.http.post(
            f"{ctx.base}/signin/consent", data={**form, "decision": "approve", "api_key": ctx.key}
        )
        assert answer.headers["location"].startswith(REDIRECT_URI + "?")
        code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "client_id": client.client_id,
            "client_secret": client.client_secret or "",
        }
        tokens = await ctx.token(data)
    assert tokens.status_code == 200, tokens.text
