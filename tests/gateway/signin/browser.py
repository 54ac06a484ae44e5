"""Helpers for the sign-in tests: a gateway with host sign-in on, user-bound keys, and a person
in a browser completing the consent page (GET it, POST its form) as a real one would."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
from mcp.client.auth import OAuthClientProvider, TokenStorage
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)

from store import open_sqlite_store
from tests.harness import (
    RunningGateway,
    base_url_of,
    demo_stdio_yaml,
    listening_socket,
    serve_gateway,
    write_config,
)

TIMEOUT = 30.0
REDIRECT_URI = "http://127.0.0.1:9/callback"
_HIDDEN = re.compile(r'<input type="hidden" name="(request|csrf)" value="([^"]+)">')


@dataclass
class SignInGateway:
    running: RunningGateway
    base_url: str

    @property
    def url(self) -> str:
        return f"{self.base_url}/mcp"


@asynccontextmanager
async def signin_gateway(
    tmp_path: Path, sign_in_yaml: str = "", sock: socket.socket | None = None
) -> AsyncIterator[SignInGateway]:
    """A gateway with host sign-in on, serving the demo upstream, at its own public_url (on
    `sock` when the test must know that URL first)."""
    sock = sock or listening_socket()
    base_url = base_url_of(sock)
    config = write_config(
        tmp_path,
        f"database: ./gw.db\npublic_url: {base_url}\nauth: {{required: true}}\n"
        f"host_sign_in:\n  enabled: true\n{sign_in_yaml}upstreams:{demo_stdio_yaml()}\n",
    )
    async with serve_gateway(config, sock) as running:
        yield SignInGateway(running, base_url)


async def create_key(
    gateway: SignInGateway, user: str | None = "ada", *, admin: bool = False, organisation: str = "default"
) -> str:
    """A new API key, created in the gateway's own database."""
    database = gateway.running.gateway.config.database
    async with open_sqlite_store(database) as store:
        org = await store.ensure_organisation(organisation)
        created = await store.create_api_key(org.id, user_id=user, is_admin=admin)
    return created.secret


@dataclass
class Browser:
    """A person's browser: opens the authorization URL the host sends it to, signs in on the
    consent page with `key` (or denies), and hands the host what its redirect URI received."""

    http: httpx2.AsyncClient
    key: str | None
    approve: bool = True
    received: list[dict[str, str]] = field(default_factory=list)
    pages: list[str] = field(default_factory=list)

    async def open(self, authorization_url: str) -> None:
        with anyio.fail_after(TIMEOUT):
            authorize = await self.http.get(authorization_url)
            assert authorize.status_code == 302, authorize.text
            page = await self.http.get(authorize.headers["location"])
            assert page.status_code == 200, page.text
            self.pages.append(page.text)
            form = dict(_HIDDEN.findall(page.text))
            body = {**form, "decision": "approve" if self.approve else "deny"}
            if self.key is not None:
                body["api_key"] = self.key
            answer = await self.http.post(
                f"{urlsplit(authorization_url)._replace(path='', query='').geturl()}/signin/consent",
                data=body,
            )
        assert answer.status_code == 303, answer.text
        location = answer.headers["location"]
        assert location.startswith(REDIRECT_URI + "?")
        self.received.append({k: v[0] for k, v in parse_qs(urlsplit(location).query).items()})

    async def callback(self) -> AuthorizationCodeResult:
        got = self.received[-1]
        return AuthorizationCodeResult(code=got.get("code", ""), state=got.get("state"), iss=got.get("iss"))


class MemoryStorage(TokenStorage):
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class PersonsBrowser(Protocol):
    """Where the host sends the person (`open`), and what its redirect URI then received."""

    async def open(self, authorization_url: str) -> None: ...

    async def callback(self) -> AuthorizationCodeResult: ...


def oauth_client(
    server_url: str,
    browser: PersonsBrowser,
    storage: MemoryStorage,
    *,
    auth_method: str | None = None,
    client_metadata_url: str | None = None,
) -> OAuthClientProvider:
    """The MCP Python SDK's own OAuth client, as a host runs it."""
    metadata = OAuthClientMetadata.model_validate(
        {
            "redirect_uris": [REDIRECT_URI],
            "client_name": "Signed-in test host",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            **({} if auth_method is None else {"token_endpoint_auth_method": auth_method}),
        }
    )
    return OAuthClientProvider(
        server_url,
        metadata,
        storage,
        redirect_handler=browser.open,
        callback_handler=browser.callback,
        client_metadata_url=client_metadata_url,
    )


@dataclass
class Registered:
    client_id: str
    client_secret: str | None


def pkce() -> tuple[str, str]:
    """A PKCE verifier and its S256 challenge (RFC 7636 section 4.2)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


async def register(http: httpx2.AsyncClient, base_url: str, **metadata: Any) -> Registered:
    body = {"redirect_uris": [REDIRECT_URI], "client_name": "Raw host", **metadata}
    response = await http.post(f"{base_url}/signin/register", json=body)
    assert response.status_code == 201, response.text
    registered = response.json()
    return Registered(registered["client_id"], registered.get("client_secret"))


def authorize_params(client_id: str, challenge: str, **extra: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "the-state",
        **extra,
    }


async def sign_in(
    http: httpx2.AsyncClient, base_url: str, client_id: str, key: str, **extra: str
) -> tuple[str, str]:
    """Authorize as a host and approve as a person with `key`: (the code, its verifier)."""
    verifier, challenge = pkce()
    browser = Browser(http, key)
    url = str(
        httpx2.URL(f"{base_url}/signin/authorize", params=authorize_params(client_id, challenge, **extra))
    )
    await browser.open(url)
    return browser.received[0]["code"], verifier


async def redeem(
    http: httpx2.AsyncClient, base_url: str, client: Registered, code: str, verifier: str
) -> httpx2.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT_URI,
        "client_id": client.client_id,
        **({} if client.client_secret is None else {"client_secret": client.client_secret}),
    }
    return await http.post(f"{base_url}/signin/token", data=data)


async def mcp_status(http: httpx2.AsyncClient, gateway: SignInGateway, access_token: str) -> int:
    """The status of an `initialize` a host sends with `access_token`: 200 while it works."""
    response = await http.post(
        gateway.url,
        headers={"authorization": f"Bearer {access_token}", "accept": "application/json, text/event-stream"},
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        },
    )
    return response.status_code
