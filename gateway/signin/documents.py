"""Client ID metadata documents: a host whose client id is an https URL publishes its metadata
there, and the gateway fetches it (draft-ietf-oauth-client-id-metadata-document).

Anyone can send such a client id to `/signin/authorize`, so the fetch follows the rules the
gateway's own OAuth client follows (`gateway/credentials/egress.py`): every address the host
resolves to is checked (link-local, private and reserved ranges never; loopback only when the
gateway itself is served on loopback, as a local gateway's hosts are), the request goes to the
checked address, redirects are not followed, and the answer is bounded in size and time. What
comes back must be a document about exactly that URL, for a public client (a document cannot
hold a secret), with redirect URIs the gateway would accept from a registration.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import orjson

from gateway.config import is_loopback_host, redirect_uri_problem
from gateway.credentials.egress import Egress, origin_of, redirect_note
from gateway.errors import OAuthError, SignInRefused

__all__ = ["MAX_DOCUMENT_BYTES", "ClientDocuments", "Document", "is_document_url"]

logger = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 16 * 1024
_FETCH_S = 5.0
_MIN_CACHE_S, _DEFAULT_CACHE_S, _MAX_CACHE_S = 300, 3600, 86400
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.IGNORECASE)


def is_document_url(client_id: str) -> bool:
    return client_id.startswith("https://")


@dataclass(frozen=True, slots=True)
class Document:
    metadata: dict[str, Any]  # checked: names this URL, a public client, acceptable redirect URIs
    cache_s: int  # how long it may be used before it is fetched again


class ClientDocuments:
    """Fetches and checks client metadata documents (the caller keeps them)."""

    def __init__(self, http: httpx2.AsyncClient, *, gateway_on_loopback: bool) -> None:
        self._http = http
        self._loopback_allowed = gateway_on_loopback

    async def fetch(self, url: str) -> Document:
        """The document at `url`, checked; `SignInRefused` (invalid_client) says why not."""
        target = self._checked_url(url)
        egress = Egress("client metadata document", url)
        request = httpx2.Request("GET", target, headers={"accept": "application/json"})
        try:
            with anyio.fail_after(_FETCH_S):
                response = await egress.send(self._http, request, [origin_of(target)])
        except TimeoutError:
            raise _refused(url, f"no answer within {_FETCH_S:.0f} s") from None
        except OAuthError as exc:  # EgressRefused among them: where it may not go, or too large
            raise _refused(url, str(exc)) from exc
        except httpx2.HTTPError as exc:
            raise _refused(url, f"could not be fetched ({type(exc).__name__})") from exc
        if response.status_code != 200:
            raise _refused(url, f"answered HTTP {response.status_code}{redirect_note(url, response)}")
        if len(response.content) > MAX_DOCUMENT_BYTES:
            raise _refused(url, f"is larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            document = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise _refused(url, "is not JSON") from None
        return Document(_checked(url, document), _cache_s(response))

    def _checked_url(self, url: str) -> httpx2.URL:
        try:
            target = httpx2.URL(url)
        except httpx2.InvalidURL:
            raise _refused(url, "is not a URL") from None
        if target.scheme != "https" or not target.host:
            raise _refused(url, "must be an https URL")
        if target.path in ("", "/") or target.fragment or target.userinfo:
            raise _refused(url, "must have a path, and no fragment or credentials")
        if any(segment in (".", "..") for segment in target.path.split("/")):
            raise _refused(url, "must not have dot segments")
        if is_loopback_host(target.host) and not self._loopback_allowed:
            raise _refused(url, "names a loopback address, which only a gateway on loopback fetches")
        return target


def _checked(url: str, document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise _refused(url, "is not a JSON object")
    if document.get("client_id") != url:
        raise _refused(url, "does not name itself as client_id")
    if "client_secret" in document or "client_secret_expires_at" in document:
        raise _refused(url, "holds a client secret, which a public document must not")
    method = document.get("token_endpoint_auth_method", "none")
    if method != "none":
        raise _refused(url, f"asks for token_endpoint_auth_method {method!r}; only 'none' is supported")
    redirect_uris = document.get("redirect_uris")
    if not isinstance(redirect_uris, list) or not redirect_uris:
        raise _refused(url, "lists no redirect_uris")
    for uri in redirect_uris:
        problem = redirect_uri_problem(uri) if isinstance(uri, str) else "not a string"
        if problem is not None:
            raise _refused(url, f"lists redirect URI {str(uri)[:200]!r}, which {problem}")
    return document


def _cache_s(response: httpx2.Response) -> int:
    """How long to keep the document: its Cache-Control max-age within 5 minutes and a day."""
    match = _MAX_AGE.search(response.headers.get("cache-control", ""))
    if match is None:
        return _DEFAULT_CACHE_S
    return max(_MIN_CACHE_S, min(_MAX_CACHE_S, int(match.group(1))))


def _refused(url: str, why: str) -> SignInRefused:
    return SignInRefused("invalid_client", f"the client metadata document {url[:300]} {why}")
