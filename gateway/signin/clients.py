"""Which hosts' clients the authorization server knows, the three ways hosts make themselves known:
listed in the config, registered (RFC 7591), or described by the metadata document their URL
client id names (fetched by `documents.py`, kept until its cache time runs out).

`HostClient` is the SDK's client record with what the gateway adds: the uuid a session records
as its `clientId`, the hash of its secret (the secret itself is never kept), and two rules of
its own. Redirect URIs match exactly, except that a loopback one may name any port at use
(RFC 8252 section 7.3: a native app gets whichever port is free). And scope: there is one, `mcp`
(what an API key carries); a host asking for others gets that one (RFC 6749 section 3.3 lets a
server ignore part of a request), which the token response then says.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from mcp.server.auth.provider import RegistrationError
from mcp.shared.auth import InvalidRedirectUriError, OAuthClientInformationFull
from pydantic import AnyUrl, ValidationError

from gateway.config import SignInClientConfig, is_loopback_host, redirect_uri_problem
from gateway.errors import SignInRefused
from gateway.signin.documents import ClientDocuments, is_document_url
from gateway.signin.resource import SCOPE
from store import SignInClient, SignInStore, hash_api_key, utc_now

__all__ = ["Clients", "HostClient", "secret_digest"]

logger = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("4d1c3f4e-5b8a-4e0f-9a51-2b7c6d1e9f30")
_MAX_REDIRECT_URIS = 20
_MAX_TEXT = 200
_MAX_URI = 2000
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
        if any(asked == str(uri) or _same_but_port(asked, str(uri)) for uri in registered):
            return redirect_uri
        raise InvalidRedirectUriError("redirect_uri is not one this client registered")

    def validate_scope(self, requested_scope: str | None) -> list[str] | None:
        return [SCOPE]

    @property
    def display_name(self) -> str:
        return self.client_name or self.client_id


def _same_but_port(asked: str, registered: str) -> bool:
    """Whether two http loopback URIs differ in their port alone (RFC 8252 section 7.3)."""
    a, r = urlsplit(asked), urlsplit(registered)
    loopback = a.scheme == r.scheme == "http" and is_loopback_host(a.hostname or "")
    return loopback and (a.hostname, a.path, a.query) == (r.hostname, r.path, r.query)


class Clients:
    def __init__(
        self, store: SignInStore, documents: ClientDocuments, configured: Sequence[SignInClientConfig]
    ) -> None:
        self._store = store
        self._documents = documents
        self._configured = {c.client_id: _from_config(c) for c in configured}
        self._refused: dict[str, float] = {}  # document URL -> monotonic time it may be tried again

    async def get(self, client_id: str) -> HostClient | None:
        """The client, or None when unknown (or its document cannot be used: logged, with why)."""
        if client_id in self._configured:
            return self._configured[client_id]
        if is_document_url(client_id):
            return await self._from_document(client_id)
        row = await self._store.client(client_id)
        if row is None or row.kind != "registered":
            return None
        return _from_row(row)

    async def register(self, info: OAuthClientInformationFull) -> None:
        """Keep a client the SDK's RFC 7591 handler has read, once the gateway's own rules pass
        (`RegistrationError` says which did not); its secret only as a hash."""
        _check_registration(info)
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

    async def _from_document(self, url: str) -> HostClient | None:
        now = utc_now()
        row = await self._store.client(url)
        if row is not None and row.kind == "document" and row.expires_at is not None and row.expires_at > now:
            return _from_row(row)
        if self._refused.get(url, 0.0) > time.monotonic():
            return None
        try:
            document = await self._documents.fetch(url)
            client = _document_client(url, document.metadata, row.id if row else str(uuid.uuid4()))
        except SignInRefused as exc:
            logger.warning("sign-in: %s", exc.description)
            self._remember_refusal(url)
            return None
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
