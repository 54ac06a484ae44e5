"""What the gateway's OAuth client may fetch, and how much of it.

An upstream's 401 and the metadata documents it leads to are written by someone else, yet they
name URLs that the gateway then fetches from inside its own network, for whoever opens a
connect link (which needs no API key). Unchecked, that is server-side request forgery: a 401
naming `http://127.0.0.1:9000/admin` or `http://169.254.169.254/...`, and the gateway GETs it.
So every request `OAuthUpstream` sends goes through `Egress.send`, which allows:

- origins: the upstream's own and, once its RFC 9728 resource metadata has named one, its
  authorization server's. The metadata URLs (RFC 9728, RFC 8414/OIDC) and the registration and
  token endpoints the server's metadata lists must be on one of the two.
- schemes: https; plain http only when the upstream itself is http on loopback, and then only to
  loopback addresses.
- addresses, every one the host resolves to: link-local (169.254/16, fe80::/10, where cloud
  metadata lives), unspecified (0.0.0.0/8, ::), multicast and reserved never; loopback only when
  the upstream is on loopback; any other non-public range (10/8, 172.16/12, 192.168/16,
  100.64/10, fc00::/7, ...) only with the upstream's `auth.allow_private_addresses`. An IPv4
  address inside IPv6 (mapped, NAT64, 6to4) is judged as itself.
- no redirects: a 3xx is an answer like a 404 (the SDK's discovery helpers then try their next
  candidate, as they expect), and the flow's error names where it pointed.
- at most 1 MiB of body (counted after decompression), all within the caller's deadline.

DNS rebinding: the host is resolved once, every address is checked, and the request is sent to
a checked address itself: the URL's host is replaced by it, while the Host header and the TLS
server name stay the name, so certificates are verified as usual. DNS is never asked a second
time, so a second answer cannot send the request elsewhere. The HTTP client keeps no idle
connections (see `gateway/app.py`), so a TLS connection verified for one name is never reused
for another name that happens to resolve to the same address.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urljoin

import anyio
import httpx2

from gateway.config import is_loopback_host
from gateway.errors import EgressRefused, OAuthError

__all__ = ["MAX_BODY_BYTES", "Egress", "Origin", "redirect_note"]

MAX_BODY_BYTES = 1024 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: not public
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# What describes a body that has been decoded and re-wrapped (see `_read_bounded`).
_BODY_FRAMING = frozenset({"content-encoding", "content-length", "transfer-encoding"})

Origin = tuple[str, str, int]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def origin_of(url: httpx2.URL) -> Origin:
    return (url.scheme, url.host.lower(), url.port or _DEFAULT_PORTS.get(url.scheme, 0))


def redirect_note(url: str, response: httpx2.Response) -> str:
    """`; <url> redirected to <where>, which is not followed` for a 3xx, else empty."""
    location = response.headers.get("location")
    if not response.is_redirect or location is None:
        return ""
    return f"; {url} redirected to {urljoin(url, location)}, which is not followed"


@dataclass(frozen=True, slots=True)
class Egress:
    """The rules for one upstream's OAuth requests (see the module docstring)."""

    upstream: str  # its name, for messages
    upstream_url: str
    allow_private: bool = False

    @property
    def _on_loopback(self) -> bool:
        return is_loopback_host(httpx2.URL(self.upstream_url).host)

    def origins(self, issuer: str | None = None) -> frozenset[Origin]:
        """Where requests may go: the upstream's origin, and its authorization server's."""
        found = {origin_of(httpx2.URL(self.upstream_url))}
        if issuer is not None:
            found.add(origin_of(httpx2.URL(issuer)))
        return frozenset(found)

    def check_url(self, url: httpx2.URL, allowed: Iterable[Origin]) -> None:
        plain_allowed = self._on_loopback and httpx2.URL(self.upstream_url).scheme == "http"
        if url.scheme != "https" and not (url.scheme == "http" and plain_allowed):
            raise EgressRefused(f"refused {url}: discovery URLs must be https for upstream {self.upstream!r}")
        if url.userinfo:
            raise EgressRefused(f"refused a URL on {url.host}: it carries credentials")
        if origin_of(url) not in set(allowed):
            raise EgressRefused(
                f"refused {url}: it is not the upstream's origin or its authorization server's"
            )

    def check_address(self, ip: IPAddress, host: str | None = None) -> None:
        kind = _kind(ip)
        if (
            kind is None
            or (kind == "loopback" and self._on_loopback)
            or (kind == "private" and self.allow_private)
        ):
            return
        what = f"{host} resolves to {ip}" if host is not None and host != str(ip) else str(ip)
        if kind == "loopback":
            why = "allowed only when the upstream itself is on loopback"
        elif kind == "private":
            why = f"set auth.allow_private_addresses: true on upstream {self.upstream!r} to allow it"
        else:
            why = "never fetched"
        raise EgressRefused(f"refused {what}: a {kind} address ({why})")

    async def send(
        self,
        client: httpx2.AsyncClient,
        request: httpx2.Request,
        allowed: Iterable[Origin],
        auth: httpx2.Auth | None = None,
    ) -> httpx2.Response:
        """Send `request` if the rules allow it, to a checked address; the answer, body read
        (at most `MAX_BODY_BYTES`). Raises `EgressRefused`, or httpx2 errors (the caller
        translates them); the caller's deadline covers resolving, connecting and reading."""
        self.check_url(request.url, allowed)
        addresses = await self._resolve(request.url)
        failure: httpx2.ConnectError | None = None
        for address in addresses:
            pinned = _pinned(request, address)
            try:
                response = await (
                    client.send(pinned, auth=auth, stream=True) if auth else client.send(pinned, stream=True)
                )
            except httpx2.ConnectError as exc:  # nothing was sent: the next address may answer
                failure = exc
                continue
            try:
                return await _read_bounded(response, request)
            finally:
                await response.aclose()
        assert failure is not None
        raise failure

    async def _resolve(self, url: httpx2.URL) -> list[str]:
        """Every address `url`'s host has, all checked: the ones the request may go to."""
        host = url.host
        try:
            found = await anyio.getaddrinfo(
                host, url.port or _DEFAULT_PORTS[url.scheme], type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise OAuthError(f"could not resolve {host}: {exc.strerror or exc}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in found))
        if not addresses:
            raise OAuthError(f"could not resolve {host}")
        ips = [ipaddress.ip_address(address) for address in addresses]
        for ip in ips:
            self.check_address(ip, host)
        if url.scheme == "http" and not all(_kind(ip) == "loopback" for ip in ips):
            raise EgressRefused(f"refused {url}: plain http goes only to loopback addresses")
        return addresses


def _kind(ip: IPAddress) -> str | None:
    """What kind of non-public address `ip` is, or None for a public one."""
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        return _kind(embedded)
    if ip.is_unspecified or ip in _THIS_NETWORK:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_loopback:
        return "loopback"
    if ip.is_reserved:
        return "reserved"
    site_local = isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local
    if site_local or ip.is_private or ip in _SHARED_ADDRESS_SPACE or not ip.is_global:
        return "private"
    return None


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for, where the network will route it there."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _pinned(request: httpx2.Request, address: str) -> httpx2.Request:
    """`request` sent to `address`, still naming its host (Host header, TLS server name)."""
    url = request.url
    extensions = dict(request.extensions)
    if url.scheme == "https":
        extensions["sni_hostname"] = url.raw_host.decode("ascii")
    return httpx2.Request(
        request.method,
        url.copy_with(host=address),
        headers=request.headers,  # carries the original Host
        content=request.content,
        extensions=extensions,
    )


async def _read_bounded(response: httpx2.Response, request: httpx2.Request) -> httpx2.Response:
    """`response` with its body read, or `EgressRefused` once it passes `MAX_BODY_BYTES`."""
    too_large = EgressRefused(f"{request.url} sent a response larger than 1 MiB; refused")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES and "content-encoding" not in response.headers:
        raise too_large
    body = bytearray()
    async for chunk in response.aiter_bytes():  # decoded: a small gzip bomb is counted as it expands
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_large
    headers = [(name, value) for name, value in response.headers.multi_items() if name not in _BODY_FRAMING]
    return httpx2.Response(response.status_code, headers=headers, content=bytes(body), request=request)
