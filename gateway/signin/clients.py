"""Which hosts' clients the authorization server knows, the three ways hosts make themselves known:
listed in the config, registered (RFC 7591), or described by the metadata document their URL
client id names (fetched by `documents.py`, kept until its cache time runs out).

`HostClient` is the SDK's client record with what the gateway adds: the uuid a session records
as its `clientId`, the hash of its secret (the secret itself is never kept), and two rules of
its own. Redirect URIs match exactly, except that a loopback one may name any port at use
(RFC 8252 section 7.3: a native app gets whichever port is free). And scope: there is one, `mcp`
(what an API key carries); a host asking for others gets that one (RFC 6749 section 3.3 lets a
server ignore part of a request), which the registration and token responses then say.

What a registration or a document holds is bounded (issue 23): the document as a whole
(`MAX_DOCUMENT_BYTES`), and each field. Fetching documents is bounded too, since anyone can send
a URL client id: `document_fetches_per_hour` per client address and `..._total` for all, at most
`MAX_CONCURRENT_FETCHES` at once (past it a fetch is refused, not queued), and a client is kept
only once its document was fetched and passed every check.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import anyio
from mcp.server.auth.provider import RegistrationError
from mcp.shared.auth import InvalidRedirectUriError, OAuthClientInformationFull
from pydantic import AnyUrl, ValidationError

from gateway.config import HostSignInConfig, SignInClientConfig, is_loopback_host, redirect_uri_problem
from gateway.errors import AuthThrottled, SignInRefused
from gateway.signin._rate import PerAddress
from gateway.signin.documents import ClientDocuments, is_document_url
from gateway.signin.resource import SCOPE
from store import SignInClient, SignInStore, hash_api_key, utc_now

__all__ = ["MAX_CONCURRENT_FETCHES", "Clients", "HostClient", "secret_digest"]

logger = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("4d1c3f4e-5b8a-4e0f-9a51-2b7c6d1e9f30")
_MAX_REDIRECT_URIS = 20
_MAX_TEXT = 200
_MAX_URI = 2000
_MAX_SCOPE = 1000
_MAX_CONTACTS = 10
_MAX_CONTACT = 320  # an e-mail address at most (RFC 5321 section 4.5.3.1)
_URI_FIELDS = ("client_uri", "logo_uri", "tos_uri", "policy_uri", "jwks_uri")
MAX_CONCURRENT_FETCHES = 8
_ALL_ADDRESSES = "(all addresses)"
_GRANT_TYPES = frozenset({"authorization_code", "refresh_token"})
_REFUSED_FOR_S = 60.0  # a document that failed is not fetched again sooner
_MAX_REFUSED = 1024
_SECRET_FIELDS: set[str] = {"client_secret", "client_secret_expires_at", "row_id", "secret_hash", "origin"}


def secret_digest(secret: str) -> str:
    return hash_api_key(secret)


class HostClient(OAuthClientInformationFull):
    """A host's client as the authorization server uses it (never with its secret)."""

    row_id: str  # the uuid recorded as the `clientId` of the sessions its sign-ins open
    secret_hash: str | None = None  # SHA-256 hex of its secret; None: a public client
    origin: str = "registered"  # registered | document | config: what the consent page says

    def validate_redirect_uri(self, redirect_uri: AnyUrl | None) -> AnyUrl:
        registered = list(self.redirect_uris or [])
        if redirect_uri is None:
            if len(registered) == 1:
                return registered[0]
            raise InvalidRedirectUriError("redirect_uri is required: the client has several")
        asked = str(redirect_uri)
        if "#" in asked:
            raise InvalidRedirectUriError("redirect_uri must not have a fragment (RFC 6749 section 3.1.2)")
        if any(asked == str(uri) or _same_but_port(asked, str(uri)) for uri in registered):
            return redirect_uri
        raise InvalidRedirectUriError("redirect_uri is not one this client registered")

    def validate_scope(self, requested_scope: str | None) -> list[str] | None:
        return [SCOPE]

    @property
    def display_name(self) -> str:
        return self.client_name or self.client_id


def _same_but_port(asked: str, registered: str) -> bool:
    """Whether two http loopback URIs differ in their port alone (RFC 8252 section 7.3):
    everything else (no credentials in either, the host, path, query) is the same."""
    try:
        a, r = urlsplit(asked), urlsplit(registered)
        hosts = a.hostname, r.hostname
    except ValueError:
        return False
    loopback = a.scheme == r.scheme == "http" and is_loopback_host(hosts[0] or "")
    rest = (a.username, a.password, hosts[0], a.path, a.query, a.fragment)
    return loopback and rest == (r.username, r.password, hosts[1], r.path, r.query, r.fragment)


class Clients:
    def __init__(self, store: SignInStore, documents: ClientDocuments, config: HostSignInConfig) -> None:
        self._store = store
        self._documents = documents
        self._configured = {c.client_id: _from_config(c) for c in config.clients}
        self._refused: dict[str, float] = {}  # document URL -> monotonic time it may be tried again
        self._fetches_per_address = PerAddress(config.document_fetches_per_hour)
        self._fetches = PerAddress(config.document_fetches_per_hour_total)
        self._fetching = anyio.CapacityLimiter(MAX_CONCURRENT_FETCHES)

    async def get(self, client_id: str, address: str | None = None) -> HostClient | None:
        """The client, or None when unknown (or its document cannot be used or fetched now:
        logged, with why)."""
        try:
            return await self.find(client_id, address)
        except AuthThrottled:
            return None

    async def find(self, client_id: str, address: str | None) -> HostClient | None:
        """As `get`, but `AuthThrottled` when a document would have to be fetched for `address`
        and that cannot be now (its limits, or all fetches busy)."""
        if client_id in self._configured:
            return self._configured[client_id]
        if is_document_url(client_id):
            return await self._from_document(client_id, address)
        row = await self._store.client(client_id)
        if row is None or row.kind != "registered":
            return None
        return _from_row(row)

    async def register(self, info: OAuthClientInformationFull) -> None:
        """Keep a client the SDK's RFC 7591 handler has read, once the gateway's own rules pass
        (`RegistrationError` says which did not); its secret only as a hash."""
        _check_registration(info)
        # RFC 7591 section 3.2.1: the server may replace requested metadata, and answers with
        # what it registered; the SDK handler answers with this object, so the scope granted.
        info.scope = SCOPE
        metadata = info.model_dump(mode="json", exclude_none=True, exclude=_SECRET_FIELDS)
        secret = info.client_secret
        row = SignInClient(
            id=info.client_id,  # a uuid the SDK minted: recorded as is
            client_id=info.client_id,
            kind="registered",
            metadata=metadata,
            secret_hash=None if secret is None else secret_digest(secret),
            created_at=utc_now(),
        )
        await self._store.save_client(row)

    async def _from_document(self, url: str, address: str | None) -> HostClient | None:
        now = utc_now()
        row = await self._store.client(url)
        if row is not None and row.kind == "document" and row.expires_at is not None and row.expires_at > now:
            return _from_row(row)
        if self._refused.get(url, 0.0) > time.monotonic():
            return None
        self._may_fetch(address)
        try:
            self._fetching.acquire_nowait()
        except anyio.WouldBlock:
            logger.warning(
                "sign-in: %d client metadata documents are being fetched; refused one more",
                MAX_CONCURRENT_FETCHES,
            )
            raise AuthThrottled(1) from None
        try:
            document = await self._documents.fetch(url)
            client = _document_client(url, document.metadata, row.id if row else str(uuid.uuid4()))
        except SignInRefused as exc:
            logger.warning("sign-in: %s", exc.description)
            self._remember_refusal(url)
            return None
        finally:
            self._fetching.release()
        saved = await self._store.save_client(
            SignInClient(
                id=client.row_id,
                client_id=url,
                kind="document",
                metadata=client.model_dump(mode="json", exclude_none=True, exclude=_SECRET_FIELDS),
                secret_hash=None,
                created_at=now,
                expires_at=now + timedelta(seconds=document.cache_s),
            )
        )
        return _from_row(saved)

    def _may_fetch(self, address: str | None) -> None:
        """Spend a fetch of `address`'s and of everyone's; `AuthThrottled` if either is spent."""
        wait = self._fetches_per_address.spend(address)
        if wait is None:
            wait = self._fetches.spend(_ALL_ADDRESSES)
        if wait is not None:
            # Not logged: a stranger trying many URLs would fill the log (the 429 says it).
            raise AuthThrottled(wait)

    def _remember_refusal(self, url: str) -> None:
        if len(self._refused) >= _MAX_REFUSED:
            now = time.monotonic()
            self._refused = {u: until for u, until in self._refused.items() if until > now}
            if len(self._refused) >= _MAX_REFUSED:
                self._refused.clear()
        self._refused[url] = time.monotonic() + _REFUSED_FOR_S


def _from_config(config: SignInClientConfig) -> HostClient:
    secret = config.client_secret
    return HostClient(
        client_id=config.client_id,
        client_name=config.client_name,
        redirect_uris=[AnyUrl(uri) for uri in config.redirect_uris],
        token_endpoint_auth_method="none" if secret is None else "client_secret_post",
        row_id=str(uuid.uuid5(_NAMESPACE, f"config:{config.client_id}")),
        secret_hash=None if secret is None else secret_digest(secret),
        origin="config",
    )


def _from_row(row: SignInClient) -> HostClient:
    fields: dict[str, Any] = {
        **row.metadata,
        "client_id": row.client_id,
        "row_id": row.id,
        "secret_hash": row.secret_hash,
        "origin": row.kind,
    }
    return HostClient.model_validate(fields)


def _document_client(url: str, metadata: dict[str, Any], row_id: str) -> HostClient:
    try:
        client = HostClient.model_validate(
            {
                **metadata,
                "client_id": url,
                "row_id": row_id,
                "origin": "document",
                "token_endpoint_auth_method": "none",
            }
        )
    except ValidationError as exc:
        why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
        raise SignInRefused(
            "invalid_client", f"the client metadata document {url[:300]} is not valid: {why}"
        ) from None
    try:
        _check_registration(client)
    except RegistrationError as exc:
        raise SignInRefused(
            "invalid_client", f"the client metadata document {url[:300]}: {exc.error_description}"
        ) from None
    return client


def _check_registration(info: OAuthClientInformationFull) -> None:
    uris = [str(uri) for uri in info.redirect_uris or []]
    if not uris:
        raise RegistrationError("invalid_redirect_uri", "redirect_uris must list at least one URI")
    if len(uris) > _MAX_REDIRECT_URIS:
        raise RegistrationError("invalid_redirect_uri", f"at most {_MAX_REDIRECT_URIS} redirect_uris")
    web = info.application_type == "web"
    for uri in uris:
        problem = "is too long" if len(uri) > _MAX_URI else redirect_uri_problem(uri)
        parts = urlsplit(uri)
        if problem is None and web and (parts.scheme != "https" or is_loopback_host(parts.hostname or "")):
            problem = (
                "must be https to a host other than loopback for a web application (OpenID Registration 2)"
            )
        if problem is not None:
            raise RegistrationError("invalid_redirect_uri", f"redirect URI {uri[:200]!r}: {problem}")
    unknown = set(info.grant_types) - _GRANT_TYPES
    if unknown or "authorization_code" not in info.grant_types:
        raise RegistrationError(
            "invalid_client_metadata", "grant_types may hold only authorization_code and refresh_token"
        )
    if info.response_types != ["code"]:
        raise RegistrationError("invalid_client_metadata", "response_types must be ['code']")
    if info.application_type not in (None, "web", "native"):
        raise RegistrationError("invalid_client_metadata", "application_type must be 'web' or 'native'")
    for name in ("client_name", "software_id", "software_version"):
        value = getattr(info, name)
        if value is not None and len(value) > _MAX_TEXT:
            raise RegistrationError(
                "invalid_client_metadata", f"{name} is longer than {_MAX_TEXT} characters"
            )
    _check_sizes(info)


def _check_sizes(info: OAuthClientInformationFull) -> None:
    """Each field within what a real client sends (the document as a whole is bounded before)."""
    if info.scope is not None and len(info.scope) > _MAX_SCOPE:
        raise RegistrationError("invalid_client_metadata", f"scope is longer than {_MAX_SCOPE} characters")
    for name in _URI_FIELDS:
        value = getattr(info, name)
        if value is not None and len(str(value)) > _MAX_URI:
            raise RegistrationError("invalid_client_metadata", f"{name} is longer than {_MAX_URI} characters")
    contacts = info.contacts or []
    if len(contacts) > _MAX_CONTACTS or any(len(c) > _MAX_CONTACT for c in contacts):
        raise RegistrationError(
            "invalid_client_metadata",
            f"contacts may list {_MAX_CONTACTS} addresses of at most {_MAX_CONTACT} characters",
        )
