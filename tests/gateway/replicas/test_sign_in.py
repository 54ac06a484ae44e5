"""A host signs in to the gateway's authorization server with each step on another replica
behind one public URL: authorize on A, the consent page on C, its answer on B, the token on C,
the refresh on A, and the token then works on every replica. The pending authorization, the
consent page's CSRF token, the code, the tokens and the OpenID Connect relying party's state are
all in the database or sealed in the browser's cookies with the key the replicas share."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import anyio
import httpx2
import pytest

from gateway.signin.consent import CONSENT_PATH
from gateway.signin.oidc import CALLBACK_PATH
from store import open_postgres_store
from tests.gateway.replicas.steering import Steer, shared_public_url
from tests.gateway.signin.browser import REDIRECT_URI, Registered, authorize_params, pkce, register
from tests.harness import RunningGateway, demo_stdio_yaml
from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET, running_oidc_provider, sign_in_at
from tests.replicas import replica_configs, serve_replicas

TIMEOUT = 30.0
_HIDDEN = re.compile(r'<input type="hidden" name="(request|csrf)" value="([^"]+)">')
ACCOUNTS: dict[str, dict[str, Any]] = {
    "alice": {"email": "alice@example.com", "email_verified": True, "name": "Alice"},
}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


@dataclass
class World:
    replicas: list[RunningGateway]
    public_url: str
    steer: Steer
    browser: httpx2.AsyncClient  # the person's browser and the host's HTTP client, steered
    key: str  # a key bound to user ada

    async def mcp_status(self, replica: int, access_token: str) -> int:
        self.steer.to = replica
        response = await self.browser.post(
            f"{self.public_url}/mcp",
            json=INITIALIZE,
            headers={
                "authorization": f"Bearer {access_token}",
                "accept": "application/json, text/event-stream",
            },
        )
        return response.status_code

    async def token(self, replica: int, client: Registered, **fields: str) -> dict[str, Any]:
        self.steer.to = replica
        secret = {} if client.client_secret is None else {"client_secret": client.client_secret}
        answer = await self.browser.post(
            f"{self.public_url}/signin/token", data={**fields, "client_id": client.client_id, **secret}
        )
        assert answer.status_code == 200, answer.text
        tokens: dict[str, Any] = answer.json()
        return tokens


@asynccontextmanager
async def sign_in_replicas(
    tmp_path: Path, postgres_url: str, public_url: str, sign_in_yaml: str = ""
) -> AsyncIterator[World]:
    configs = replica_configs(
        tmp_path,
        postgres_url,
        demo_stdio_yaml(sessions="shared"),
        replicas=3,
        extra_yaml=(
            f"public_url: {public_url}\nauth: {{required: true}}\n"
            f"host_sign_in:\n  enabled: true\n{sign_in_yaml}"
        ),
    )
    async with open_postgres_store(postgres_url) as store:
        org = await store.ensure_organisation("default")
        key = await store.create_api_key(org.id, user_id="ada")
    async with serve_replicas(configs) as replicas:
        steer = Steer(public_url, [r.base_url for r in replicas])
        async with httpx2.AsyncClient(transport=steer, timeout=TIMEOUT, follow_redirects=False) as browser:
            yield World(replicas, public_url, steer, browser, key.secret)


async def authorize(world: World, replica: int) -> tuple[Registered, str, str]:
    """Register a client and send its authorization request to `replica`: the client, the
    PKCE verifier, and the consent page's URL."""
    world.steer.to = replica
    client = await register(world.browser, world.public_url, client_name="Spread host")
    verifier, challenge = pkce()
    authorized = await world.browser.get(
        f"{world.public_url}/signin/authorize", params=authorize_params(client.client_id, challenge)
    )
    assert authorized.status_code == 302, authorized.text
    location = authorized.headers["location"]
    assert location.startswith(world.public_url + CONSENT_PATH)
    return client, verifier, location


def code_of(answer: httpx2.Response) -> str:
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    assert location.startswith(REDIRECT_URI + "?"), location
    received = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert received["state"] == "the-state"
    return received["code"]


async def test_a_sign_in_with_a_key_spread_over_three_replicas_works_on_all_of_them(
    tmp_path: Path, postgres_url: str
) -> None:
    held, public_url = shared_public_url()
    with held:
        async with sign_in_replicas(tmp_path, postgres_url, public_url) as world:
            await spread_key_sign_in(world)


async def spread_key_sign_in(world: World) -> None:
    with anyio.fail_after(TIMEOUT):
        client, verifier, consent_url = await authorize(world, 0)
        world.steer.to = 2
        page = await world.browser.get(consent_url)
        assert page.status_code == 200, page.text
        form = dict(_HIDDEN.findall(page.text))
        world.steer.to = 1
        answer = await world.browser.post(
            world.public_url + CONSENT_PATH, data={**form, "decision": "approve", "api_key": world.key}
        )
        code = code_of(answer)
        tokens = await world.token(
            2, client, grant_type="authorization_code", code=code, code_verifier=verifier,
            redirect_uri=REDIRECT_URI,
        )  # fmt: skip
        refreshed = await world.token(
            0, client, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
        )
        assert refreshed["access_token"] != tokens["access_token"]
        for replica in range(3):
            assert await world.mcp_status(replica, refreshed["access_token"]) == 200
        # The code and the spent refresh token are refused wherever they are sent again.
        world.steer.to = 1
        again = await world.browser.post(
            f"{world.public_url}/signin/token",
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                  "client_id": client.client_id, "client_secret": client.client_secret or ""},
        )  # fmt: skip
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
        # The page's answer needs the cookie set with the page, on whichever replica.
        _, _, other_url = await authorize(world, 0)
        world.steer.to = 2
        other = dict(_HIDDEN.findall((await world.browser.get(other_url)).text))
        async with httpx2.AsyncClient(transport=world.steer, timeout=TIMEOUT) as elsewhere:
            world.steer.to = 1
            forged = await elsewhere.post(
                world.public_url + CONSENT_PATH, data={**other, "decision": "approve", "api_key": world.key}
            )
        assert forged.status_code == 403
    assert set(world.steer.sent) == {0, 1, 2}


@pytest.mark.usefixtures("node_modules")
async def test_a_sign_in_with_the_organisations_provider_spread_over_three_replicas(
    tmp_path: Path, postgres_url: str
) -> None:
    """The consent page's provider button on B, the provider's way back on C (the relying
    party's state is a cookie sealed with the shared key), the token on A."""
    held, public_url = shared_public_url()
    with held:
        async with running_oidc_provider([public_url + CALLBACK_PATH], ACCOUNTS) as provider:
            oidc = (
                "  oidc:\n"
                "    - name: corp\n"
                "      display_name: Corp SSO\n"
                f"      issuer: {provider.issuer}\n"
                f"      client_id: {CLIENT_ID}\n"
                f"      client_secret: {CLIENT_SECRET}\n"
                "      scopes: [openid, email, profile]\n"
                "      domains: {example.com: default}\n"
            )
            async with sign_in_replicas(tmp_path, postgres_url, public_url, oidc) as world:
                await spread_provider_sign_in(world)


async def spread_provider_sign_in(world: World) -> None:
    with anyio.fail_after(TIMEOUT):
        client, verifier, consent_url = await authorize(world, 0)
        world.steer.to = 1
        page = await world.browser.get(consent_url)
        assert page.status_code == 200, page.text
        to_provider = await world.browser.post(
            world.public_url + CONSENT_PATH,
            data={**dict(_HIDDEN.findall(page.text)), "decision": "oidc:corp"},
        )
        assert to_provider.status_code == 303, to_provider.text
        back = await sign_in_at(
            world.browser, to_provider.headers["location"], "alice", world.public_url + CALLBACK_PATH
        )
        world.steer.to = 2
        code = code_of(await world.browser.get(urljoin(str(back.url), back.headers["location"])))
        tokens = await world.token(
            0, client, grant_type="authorization_code", code=code, code_verifier=verifier,
            redirect_uri=REDIRECT_URI,
        )  # fmt: skip
        for replica in range(3):
            assert await world.mcp_status(replica, tokens["access_token"]) == 200
