"""What OAuth discovery may make the gateway fetch: only the upstream's own origin and its
authorization server's, over https (or http when the upstream is http on loopback), never a
link-local, unspecified or private address, no redirects followed, and never more than
1 MiB or longer than the upstream's `connect_s`.

Each case is an upstream on 127.0.0.1 whose 401 (or whose metadata) names a URL elsewhere; a
second real server counts every request that reaches it, so "not fetched" is a count of zero.
The person opening the connect link gets a 502 page that says what was refused.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.credentials.egress import Egress
from gateway.errors import EgressRefused
from tests.api.conftest import McpClient
from tests.connecting import confirm, connect_url, serve_gateway_at_own_url
from tests.harness import base_url_of, listening_socket, serve_asgi_on
from tests.oauth import running_auth_server, serve_protected_upstream

TIMEOUT = 30.0
PRM_PATH = "/.well-known/oauth-protected-resource/mcp"


@dataclass
class Counter:
    """A server that answers everything with resource metadata and counts what reaches it."""

    base_url: str
    requests: list[str] = field(default_factory=list)


@asynccontextmanager
async def counting_server(sock: socket.socket | None = None) -> AsyncIterator[Counter]:
    sock = sock or listening_socket()
    counter = Counter(base_url_of(sock))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        counter.requests.append(f"{scope['method']} {scope['path']}")
        body = JSONResponse({"resource": "http://example.invalid/mcp", "authorization_servers": []})
        await body(scope, receive, send)

    async with serve_asgi_on(sock, app):
        yield counter


@dataclass
class Upstream:
    """An MCP upstream on 127.0.0.1 that refuses everything with 401, naming `resource_metadata`
    (a path of its own, or any URL); its own metadata documents are whatever the test sets."""

    base_url: str
    resource_metadata: str = ""
    authorization_server: str = ""  # what its resource metadata names; default: itself
    registration_endpoint: str = ""  # what its own AS metadata names; default: its own /register
    serves_metadata: bool = True  # False: its well-known resource metadata URLs are 404

    @property
    def url(self) -> str:
        return f"{self.base_url}/mcp"


def _upstream_app(upstream: Upstream, elsewhere: Callable[[], str]) -> Starlette:
    async def mcp(request: Request) -> Response:
        named = upstream.resource_metadata or f"{upstream.base_url}{PRM_PATH}"
        challenge = f'Bearer resource_metadata="{named}"'
        return JSONResponse({"error": "unauthorized"}, 401, {"www-authenticate": challenge})

    async def resource_metadata(request: Request) -> Response:
        if not upstream.serves_metadata:
            return JSONResponse({"error": "not found"}, 404)
        server = upstream.authorization_server or upstream.base_url
        return JSONResponse({"resource": upstream.url, "authorization_servers": [server]})

    async def server_metadata(request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": upstream.base_url,
                "authorization_endpoint": f"{upstream.base_url}/authorize",
                "token_endpoint": f"{upstream.base_url}/token",
                "registration_endpoint": upstream.registration_endpoint or f"{upstream.base_url}/register",
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def redirect(request: Request) -> Response:
        return RedirectResponse(f"{elsewhere()}{PRM_PATH}", 302)

    async def big(request: Request) -> Response:
        return Response(b"{" + b" " * (2 * 1024 * 1024) + b"}", media_type="application/json")

    async def endless(request: Request) -> Response:
        async def forever() -> AsyncIterator[bytes]:
            chunk = b" " * 65536
            while True:
                yield chunk
                await anyio.lowlevel.checkpoint()  # a remote server would not hold up this loop

        return StreamingResponse(forever(), media_type="application/json")

    async def trickle(request: Request) -> Response:
        async def slowly() -> AsyncIterator[bytes]:
            yield b"{"
            await anyio.sleep_forever()  # a body that never ends (the gateway's deadline must)
            yield b"}"  # pragma: no cover

        return StreamingResponse(slowly(), media_type="application/json")

    return Starlette(
        routes=[
            Route("/mcp", mcp, methods=["POST", "GET", "DELETE"]),
            Route(PRM_PATH, resource_metadata),
            Route("/.well-known/oauth-authorization-server", server_metadata),
            Route("/redirect", redirect),
            Route("/big", big),
            Route("/endless", endless),
            Route("/trickle", trickle),
        ]
    )


@asynccontextmanager
async def fake_upstream(elsewhere: Callable[[], str] = lambda: "") -> AsyncIterator[Upstream]:
    sock = listening_socket()
    upstream = Upstream(base_url_of(sock))
    async with serve_asgi_on(sock, _upstream_app(upstream, elsewhere)):
        yield upstream


def gateway_body(upstream: Upstream, auth_extra: str = "", connect_s: float = 5) -> str:
    return f"""
auth: {{required: false}}
upstreams:
  - name: gh
    transport: http
    url: "{upstream.url}"
    timeouts: {{connect_s: {connect_s}}}
    auth: {{kind: oauth{auth_extra}}}
"""


async def open_connect_link(tmp_path: Path, upstream: Upstream, connect_s: float = 5) -> httpx2.Response:
    """A key-less host's first call, then the connect link it got, opened as a browser would."""
    async with (
        serve_gateway_at_own_url(tmp_path, gateway_body(upstream, connect_s=connect_s)) as gateway,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
    ):
        with anyio.fail_after(TIMEOUT):
            host = McpClient(http, gateway.url, "")
            url = connect_url(await host.call(await host.open(), "gh__whoami", {}))
            return await http.get(url, follow_redirects=False)


async def test_a_resource_metadata_url_on_another_port_is_not_fetched(tmp_path: Path) -> None:
    async with counting_server() as counter, fake_upstream() as upstream:
        upstream.resource_metadata = f"{counter.base_url}{PRM_PATH}"
        page = await open_connect_link(tmp_path, upstream)
    assert counter.requests == []
    assert page.status_code == 502
    assert "not the upstream&#x27;s origin" in page.text and counter.base_url in page.text


async def test_a_resource_metadata_url_on_another_host_is_not_fetched(tmp_path: Path) -> None:
    async with counting_server() as counter, fake_upstream() as upstream:
        port = counter.base_url.rsplit(":", 1)[1]
        upstream.resource_metadata = f"http://localhost:{port}{PRM_PATH}"  # the same machine, by name
        page = await open_connect_link(tmp_path, upstream)
    assert counter.requests == []
    assert page.status_code == 502 and "not the upstream&#x27;s origin" in page.text


async def test_an_authorization_server_on_the_unspecified_address_is_not_fetched(tmp_path: Path) -> None:
    """0.0.0.0 reaches this machine's own servers on Linux: a way around a loopback check."""
    async with counting_server() as counter, fake_upstream() as upstream:
        port = counter.base_url.rsplit(":", 1)[1]
        upstream.authorization_server = f"http://0.0.0.0:{port}"
        page = await open_connect_link(tmp_path, upstream)
    assert counter.requests == []
    assert page.status_code == 502 and "0.0.0.0" in page.text and "unspecified" in page.text


def _private_address_of_this_machine() -> str | None:
    """A non-loopback, non-global IPv4 address of this machine (a LAN or container address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a source address
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    ip = ipaddress.ip_address(address)
    return None if ip.is_loopback or ip.is_global or ip.is_unspecified else address


async def test_an_authorization_server_on_a_private_address_is_not_fetched(tmp_path: Path) -> None:
    private = _private_address_of_this_machine()
    if private is None:
        pytest.skip("this machine has no private (LAN or container) IPv4 address to listen on")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind((private, 0))
    sock.listen(16)
    sock.setblocking(False)
    async with counting_server(sock) as counter, fake_upstream() as upstream:
        upstream.authorization_server = counter.base_url.replace("127.0.0.1", private)
        page = await open_connect_link(tmp_path, upstream)
    assert counter.requests == []
    assert page.status_code == 502 and "private address" in page.text
    assert "allow_private_addresses" in page.text  # the page says how an admin would allow it


async def test_a_registration_endpoint_on_another_origin_is_not_called(tmp_path: Path) -> None:
    async with counting_server() as counter, fake_upstream() as upstream:
        upstream.registration_endpoint = f"{counter.base_url}/register"
        page = await open_connect_link(tmp_path, upstream)
    assert counter.requests == []
    assert page.status_code == 502 and "/register" in page.text


async def test_a_redirect_to_another_origin_is_not_followed(tmp_path: Path) -> None:
    async with counting_server() as counter, fake_upstream(lambda: counter.base_url) as upstream:
        upstream.resource_metadata = f"{upstream.base_url}/redirect"
        upstream.serves_metadata = False  # so discovery has nowhere else to go
        page = await open_connect_link(tmp_path, upstream)
    assert counter.requests == []
    assert page.status_code == 502
    assert "redirected to" in page.text and "not followed" in page.text


async def test_an_oversized_metadata_document_is_refused(tmp_path: Path) -> None:
    async with fake_upstream() as upstream:
        upstream.resource_metadata = f"{upstream.base_url}/big"
        page = await open_connect_link(tmp_path, upstream)
    assert page.status_code == 502 and "larger than 1 MiB" in page.text


async def test_a_metadata_document_that_never_ends_is_cut_at_the_size_limit(tmp_path: Path) -> None:
    async with fake_upstream() as upstream:
        upstream.resource_metadata = f"{upstream.base_url}/endless"
        with anyio.fail_after(TIMEOUT):
            page = await open_connect_link(tmp_path, upstream, connect_s=20)
    assert page.status_code == 502 and "larger than 1 MiB" in page.text


async def test_a_metadata_document_that_stops_sending_is_cut_at_the_deadline(tmp_path: Path) -> None:
    async with fake_upstream() as upstream:
        upstream.resource_metadata = f"{upstream.base_url}/trickle"
        page = await open_connect_link(tmp_path, upstream, connect_s=1)
    assert page.status_code == 502 and "did not answer within 1s" in page.text


async def test_the_real_authorization_server_on_another_loopback_port_is_still_used(tmp_path: Path) -> None:
    """The allowed case beside the refused ones: a loopback upstream's AS on another loopback port."""
    async with (
        running_auth_server() as auth,
        serve_protected_upstream(auth) as upstream,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
    ):
        body = f"""
auth: {{required: false}}
upstreams:
  - {{name: gh, transport: http, url: "{upstream.url}", auth: {{kind: oauth}}}}
"""
        async with serve_gateway_at_own_url(tmp_path, body) as gateway:
            with anyio.fail_after(TIMEOUT):
                host = McpClient(http, gateway.url, "")
                url = connect_url(await host.call(await host.open(), "gh__whoami", {}))
                to_server = await confirm(http, url)
    assert to_server.status_code == 303 and to_server.headers["location"].startswith(auth.issuer)
    assert auth.registrations == 1


@pytest.mark.parametrize(
    ("address", "loopback_upstream", "allow_private", "refused_because"),
    [
        ("169.254.169.254", True, True, "link-local"),  # cloud metadata: never, whatever is allowed
        ("fe80::1", True, True, "link-local"),
        ("0.0.0.0", True, True, "unspecified"),
        ("::", True, True, "unspecified"),
        ("224.0.0.1", True, True, "multicast"),
        ("240.0.0.1", True, True, "reserved"),
        ("::ffff:169.254.169.254", True, True, "link-local"),  # IPv4-mapped
        ("64:ff9b::a9fe:a9fe", True, True, "link-local"),  # NAT64 of 169.254.169.254
        ("2002:a9fe:a9fe::1", True, True, "link-local"),  # 6to4 of 169.254.169.254
        ("127.0.0.1", False, True, "loopback"),
        ("::1", False, True, "loopback"),
        ("127.0.0.1", True, False, None),
        ("10.1.2.3", True, False, "private"),
        ("172.16.0.1", False, False, "private"),
        ("192.168.1.1", False, False, "private"),
        ("100.64.0.1", False, False, "private"),  # carrier-grade NAT
        ("fd00::1", False, False, "private"),
        ("fec0::1", False, False, "private"),  # site-local (deprecated, still not public)
        ("10.1.2.3", False, True, None),
        ("fd00::1", False, True, None),
        ("8.8.8.8", False, False, None),
        ("2606:4700:4700::1111", False, False, None),
    ],
)
def test_addresses_are_refused_by_kind_unless_the_upstream_or_config_allows_them(
    address: str, loopback_upstream: bool, allow_private: bool, refused_because: str | None
) -> None:
    upstream = "http://127.0.0.1:9000/mcp" if loopback_upstream else "https://mcp.example.com/mcp"
    egress = Egress("gh", upstream, allow_private=allow_private)
    if refused_because is None:
        egress.check_address(ipaddress.ip_address(address))
    else:
        with pytest.raises(EgressRefused, match=refused_because):
            egress.check_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("url", "refused_because"),
    [
        ("https://mcp.example.com/.well-known/oauth-protected-resource", None),
        ("https://MCP.example.com:443/x", None),  # the same origin, spelt otherwise
        ("https://as.example.com/token", None),  # the authorization server's
        ("http://mcp.example.com/x", "https"),
        ("https://mcp.example.com:8443/x", "origin"),
        ("https://evil.example.com/x", "origin"),
        ("https://user:pw@mcp.example.com/x", "credentials"),
        ("file:///etc/passwd", "https"),
    ],
)
def test_urls_must_be_https_on_the_upstreams_or_its_servers_origin(
    url: str, refused_because: str | None
) -> None:
    egress = Egress("gh", "https://mcp.example.com/mcp", allow_private=False)
    allowed = egress.origins("https://as.example.com")
    if refused_because is None:
        egress.check_url(httpx2.URL(url), allowed)
    else:
        with pytest.raises(EgressRefused, match=refused_because):
            egress.check_url(httpx2.URL(url), allowed)
