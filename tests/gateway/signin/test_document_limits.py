"""Issue 23, defect 3: client metadata documents are fetched within limits: so many per address
and in all per hour, a few at once, and a client whose document failed is never kept. The
documents come from a real https server on 127.0.0.1 (`document_server`), whose handler counts
the fetches it sees and, for the concurrency test, holds them until the test lets them go."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.gateway.signin.browser import REDIRECT_URI, TIMEOUT, authorize_params, pkce, signin_gateway
from tests.harness import listening_socket
from tests.tls import make_certificates

MAX_CONCURRENT_FETCHES = 8  # gateway/signin/clients.py


class Documents:
    """Serves a valid document for any `/ok/<name>.json`, a 404 for `/missing/...`, and holds
    `/slow/...` until `release` is set; counts what it saw."""

    def __init__(self) -> None:
        self.fetched: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.release = anyio.Event()
        self.all_in = anyio.Event()  # MAX_CONCURRENT_FETCHES held at once
        self.base = ""

    async def serve(self, request: Request) -> Response:
        path = request.url.path
        self.fetched.append(path)
        if path.startswith("/missing/"):
            return Response(status_code=404)
        if path.startswith("/slow/"):
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            if self.in_flight == MAX_CONCURRENT_FETCHES:
                self.all_in.set()
            try:
                with anyio.move_on_after(TIMEOUT):
                    await self.release.wait()
            finally:
                self.in_flight -= 1
        document = {
            "client_id": f"{self.base}{path}",
            "client_name": "Document host",
            "redirect_uris": [REDIRECT_URI],
            "token_endpoint_auth_method": "none",
        }
        return JSONResponse(document, headers={"cache-control": "max-age=600"})


@asynccontextmanager
async def document_server(tmp_path: Path) -> AsyncIterator[Documents]:
    certificates = make_certificates(tmp_path)
    sock = listening_socket()
    documents = Documents()
    documents.base = f"https://127.0.0.1:{sock.getsockname()[1]}"
    app = Starlette(routes=[Route("/{kind}/{name}", documents.serve)])
    config = uvicorn.Config(
        app,
        log_level="warning",
        ssl_certfile=str(certificates.cert_file),
        ssl_keyfile=str(certificates.key_file),
    )
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        yield documents
    finally:
        documents.release.set()
        server.should_exit = True
        with anyio.fail_after(TIMEOUT):
            await task
        sock.close()


@pytest.fixture
def trusted_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As in test_documents.py: the gateway's HTTP client trusts the test CA document_server writes.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))


async def _authorize(http: httpx2.AsyncClient, base_url: str, client_id: str) -> httpx2.Response:
    params = authorize_params(client_id, pkce()[1])
    return await http.get(f"{base_url}/signin/authorize", params=params)


@pytest.mark.parametrize(
    "limits",
    ["  document_fetches_per_hour: 3\n", "  document_fetches_per_hour_total: 3\n"],
    ids=["per-address", "in-all"],
)
async def test_document_fetches_past_the_hourly_limit_are_refused_without_a_fetch(
    tmp_path: Path, trusted_ca: None, limits: str
) -> None:
    async with (
        document_server(tmp_path) as documents,
        signin_gateway(tmp_path, limits) as gateway,
        httpx2.AsyncClient(follow_redirects=False) as http,
    ):
        with anyio.fail_after(TIMEOUT):
            answers = [
                await _authorize(http, gateway.base_url, f"{documents.base}/ok/{i}.json") for i in range(5)
            ]
            # A document already kept needs no fetch: it still signs in.
            again = await _authorize(http, gateway.base_url, f"{documents.base}/ok/0.json")
        rows = [
            await gateway.running.gateway.store.signin.client(f"{documents.base}/ok/{i}.json")
            for i in range(5)
        ]
    assert [a.status_code for a in answers] == [302, 302, 302, 429, 429], [a.text for a in answers]
    assert int(answers[3].headers["retry-after"]) > 0
    assert answers[3].json()["error"] == "invalid_request"
    assert len(documents.fetched) == 3
    assert [row is not None for row in rows] == [True, True, True, False, False]
    assert again.status_code == 302 and "/signin/consent?" in again.headers["location"]


async def test_only_a_few_documents_are_fetched_at_once_and_the_others_are_refused_at_once(
    tmp_path: Path, trusted_ca: None
) -> None:
    async with (
        document_server(tmp_path) as documents,
        signin_gateway(tmp_path) as gateway,
        httpx2.AsyncClient(follow_redirects=False, timeout=TIMEOUT) as http,
    ):
        statuses: list[int] = []
        refused = anyio.Event()

        async def authorize(i: int) -> None:
            answer = await _authorize(http, gateway.base_url, f"{documents.base}/slow/{i}.json")
            statuses.append(answer.status_code)
            if len(statuses) == 6:
                refused.set()

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                for i in range(MAX_CONCURRENT_FETCHES + 6):
                    tg.start_soon(authorize, i)
                # The ones past the cap are answered while the others still hang.
                await refused.wait()
                await documents.all_in.wait()
                documents.release.set()
    assert documents.most_in_flight == MAX_CONCURRENT_FETCHES
    assert sorted(statuses) == [302] * MAX_CONCURRENT_FETCHES + [429] * 6


async def test_a_client_whose_document_failed_is_never_kept_and_not_fetched_again_at_once(
    tmp_path: Path, trusted_ca: None
) -> None:
    async with (
        document_server(tmp_path) as documents,
        signin_gateway(tmp_path) as gateway,
        httpx2.AsyncClient(follow_redirects=False) as http,
    ):
        url = f"{documents.base}/missing/client.json"
        with anyio.fail_after(TIMEOUT):
            first = await _authorize(http, gateway.base_url, url)
            second = await _authorize(http, gateway.base_url, url)
            token = await http.post(
                f"{gateway.base_url}/signin/token",
                data={
                    "grant_type": "authorization_code",
                    "client_id": url,
                    "code": "x",
                    "code_verifier": "y",
                },
            )
        row = await gateway.running.gateway.store.signin.client(url)
    assert first.status_code == 400 and second.status_code == 400 and "location" not in first.headers
    assert token.status_code == 401 and token.json()["error"] == "invalid_client"
    assert documents.fetched == ["/missing/client.json"]
    assert row is None
