"""Item 3 of issue 13: a host whose client id is the https URL of its client metadata document
(CIMD) signs in with no registration: the gateway fetches the document (a real https server on
127.0.0.1, whose test CA the gateway is told to trust through SSL_CERT_FILE), checks it, and the
sessions the host opens record the document's client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.gateway.signin.browser import (
    REDIRECT_URI,
    TIMEOUT,
    Browser,
    MemoryStorage,
    authorize_params,
    create_key,
    oauth_client,
    pkce,
    signin_gateway,
)
from tests.harness import listening_socket
from tests.tls import make_certificates


@asynccontextmanager
async def document_server(tmp_path: Path, documents: dict[str, Any]) -> AsyncIterator[str]:
    """An https server on 127.0.0.1 serving `documents` (path -> JSON, where "{base}" in a string
    becomes its own origin); yields its origin."""
    certificates = make_certificates(tmp_path)
    sock = listening_socket()
    base = f"https://127.0.0.1:{sock.getsockname()[1]}"

    async def serve(request: Request) -> JSONResponse:
        document = documents[request.url.path]
        text = {k: v.replace("{base}", base) if isinstance(v, str) else v for k, v in document.items()}
        return JSONResponse(text, headers={"cache-control": "max-age=600"})

    app = Starlette(routes=[Route(path, serve) for path in documents])
    config = uvicorn.Config(
        app,
        log_level="warning",
        ssl_certfile=str(certificates.cert_file),
        ssl_keyfile=str(certificates.key_file),
    )
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        yield base
    finally:
        server.should_exit = True
        with anyio.fail_after(TIMEOUT):
            await task
        sock.close()


DOCUMENT = {
    "client_id": "{base}/oauth/client.json",
    "client_name": "Document host",
    "redirect_uris": [REDIRECT_URI],
    "grant_types": ["authorization_code", "refresh_token"],
    "response_types": ["code"],
    "token_endpoint_auth_method": "none",
}


@pytest.fixture
def trusted_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The certificates are written by document_server into tmp_path; the gateway's HTTP client
    # reads SSL_CERT_FILE when it is created, after this.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_a_host_identified_by_its_metadata_document_signs_in_without_registering(
    tmp_path: Path, trusted_ca: None, mode: str
) -> None:
    documents = {"/oauth/client.json": DOCUMENT, "/oauth/other.json": {**DOCUMENT, "client_id": "{base}/x"}}
    async with document_server(tmp_path, documents) as origin, signin_gateway(tmp_path) as gateway:
        key = await create_key(gateway, "ada")
        storage = MemoryStorage()
        url = f"{origin}/oauth/client.json"
        async with httpx2.AsyncClient(follow_redirects=False) as browser_http:
            browser = Browser(browser_http, key)
            auth = oauth_client(gateway.url, browser, storage, client_metadata_url=url)
            async with (
                httpx2.AsyncClient(auth=auth, timeout=TIMEOUT) as http,
                Client(streamable_http_client(gateway.url, http_client=http), mode=mode) as client,
            ):
                with anyio.fail_after(TIMEOUT):
                    result = await client.call_tool("demo__echo", {"text": "by document"})
            # A document that does not name itself is no client: refused without a redirect.
            with anyio.fail_after(TIMEOUT):
                other = await browser_http.get(
                    f"{gateway.base_url}/signin/authorize",
                    params=authorize_params(f"{origin}/oauth/other.json", pkce()[1]),
                )
        assert result.content[0].model_dump()["text"] == "by document"
        assert storage.client_info is not None and storage.client_info.client_id == url
        assert "Document host" in browser.pages[0]
        kept = await gateway.running.gateway.store.signin.client(url)
        assert kept is not None and kept.kind == "document"
        (grant,) = await gateway.running.gateway.store.signin.grants(
            (await gateway.running.gateway.store.ensure_organisation("default")).id
        )
        assert grant.client_row_id == kept.id
        assert other.status_code == 400 and "location" not in other.headers
