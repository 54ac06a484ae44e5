"""The gateway as an OAuth 2.1 client of one upstream's authorization server.

Discovery follows the MCP authorization spec: the upstream's 401 names its protected resource
metadata (RFC 9728), which names the authorization server, whose RFC 8414 (or OIDC) metadata
must carry exactly that issuer. The client is the configured one, a client metadata document,
or registered on the fly (RFC 7591) and kept. Every authorization uses PKCE S256 (a server that
does not offer it is refused), `state`, and RFC 8707 `resource` on both the authorise and the
token requests. The URL building and metadata parsing are the `mcp` SDK's and authlib's; this
module only sequences them over the gateway's own HTTP client. Every request it sends obeys
`egress.py`: the upstream's and its authorization server's origins only, no private addresses,
no redirects, bounded answers.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from mcp.client.auth import OAuthFlowError, OAuthRegistrationError
from mcp.client.auth.utils import (
    build_oauth_authorization_server_metadata_discovery_urls,
    build_protected_resource_metadata_discovery_urls,
    create_client_registration_request,
    create_oauth_metadata_request,
    extract_resource_metadata_from_www_auth,
    extract_scope_from_www_auth,
    handle_auth_metadata_response,
    handle_protected_resource_response,
    handle_registration_response,
    union_scopes,
    validate_authorization_response_iss,
    validate_metadata_issuer,
)
from mcp.shared.auth import OAuthClientMetadata, OAuthMetadata, OAuthToken
from pydantic import AnyUrl, ValidationError

from gateway.config import UpstreamConfig, is_loopback_host
from gateway.credentials.egress import Egress, Origin, redirect_note
from gateway.errors import OAuthError
from store import OAuthClient, Store, utc_now

_DISCOVERY_TTL_S = 3600.0
CLIENT_DOCUMENT_PATH = "/oauth/client-metadata.json"
_CLIENT_NAME = "mcpgw"


@dataclass(frozen=True, slots=True)
class AuthServer:
    """What discovery learnt about one upstream: its resource id, server metadata and scopes."""

    resource: str
    metadata: OAuthMetadata
    scope: str | None

    @property
    def issuer(self) -> str:
        return str(self.metadata.issuer)


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    refresh_token: str | None
    expires_at: datetime | None
    scope: str | None

    def as_secret(self) -> dict[str, Any]:
        return {"access_token": self.access_token, "refresh_token": self.refresh_token, "scope": self.scope}


def client_document(client_id: str, redirect_uri: str) -> dict[str, Any]:
    """The gateway's OAuth client metadata document, served at its own client id URL."""
    return {
        "client_id": client_id,
        "client_name": _CLIENT_NAME,
        "redirect_uris": [redirect_uri],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }


def redirect_uri_for(public_url: str) -> str:
    """Where authorization servers send users back to the gateway."""
    return f"{public_url}/oauth/callback"


def document_url_for(public_url: str) -> str | None:
    """Where the gateway's client document lives, if a server may fetch it as a client id:
    https, or plain http on a loopback address (as OAuth 2.1 allows loopback redirects)."""
    parts = urlsplit(public_url)
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(parts.hostname or "")):
        return f"{public_url}{CLIENT_DOCUMENT_PATH}"
    return None


def new_pkce_secret() -> dict[str, str]:
    """A flow's secret part: its `state` and PKCE verifier (RFC 7636: 43-128 unreserved chars)."""
    return {"state": generate_token(43), "code_verifier": generate_token(64)}


class OAuthUpstream:
    """OAuth for one upstream: discovery (cached), the client, and the three kinds of request."""

    def __init__(
        self,
        config: UpstreamConfig,
        client: httpx2.AsyncClient,
        store: Store,
        redirect_uri: str,
        document_url: str | None,
    ) -> None:
        assert config.url is not None
        self.config = config
        self._http = client
        self._store = store
        self.redirect_uri = redirect_uri
        self._document_url = document_url
        self._egress = Egress(config.name, config.url, config.auth.allow_private_addresses)
        self._server: AuthServer | None = None
        self._discovered_at = 0.0
        self._lock = anyio.Lock()

    # -- discovery -----------------------------------------------------------------------------

    async def server(self, *, since: float | None = None) -> AuthServer:
        """What discovery found, discovered again after _DISCOVERY_TTL_S, and with `since` (a
        monotonic time) unless a discovery started after it: the upstream refused a token then,
        and may have moved to another authorization server (SEP-2352), which its resource
        metadata would name now. Refusals at once share one discovery."""
        async with self._lock:
            now = time.monotonic()
            if (
                self._server is None
                or now - self._discovered_at > _DISCOVERY_TTL_S
                or (since is not None and self._discovered_at < since)
            ):
                self._server = await self._discover()
                self._discovered_at = now
            return self._server

    async def _discover(self) -> AuthServer:
        url = self.config.url
        assert url is not None
        probe = {"jsonrpc": "2.0", "id": "mcpgw-discover", "method": "ping"}
        own = self._egress.origins()  # until the resource metadata names its server
        challenge = await self._send(
            httpx2.Request(
                "POST", url, json=probe, headers={"accept": "application/json, text/event-stream"}
            ),
            own,
        )
        if challenge.status_code != 401:
            raise OAuthError(
                f"{url} answered HTTP {challenge.status_code} without a token, not 401", permanent=True
            )
        resource = None
        notes = ""
        found_at = ""
        for candidate in build_protected_resource_metadata_discovery_urls(
            extract_resource_metadata_from_www_auth(challenge), url
        ):
            response = await self._send(create_oauth_metadata_request(candidate), own)
            resource = await handle_protected_resource_response(response)
            if resource is not None:
                found_at = candidate
                break
            notes += redirect_note(candidate, response)
        if resource is None:
            raise OAuthError(
                f"{url} publishes no protected resource metadata (RFC 9728){notes}", permanent=True
            )
        if not _describes(str(resource.resource), url, found_at):
            # RFC 9728 section 3.3: metadata for another resource must not be used for this one.
            raise OAuthError(f"{url}'s resource metadata describes {resource.resource}", permanent=True)
        issuer = str(resource.authorization_servers[0])
        metadata = await self._server_metadata(issuer, url)
        methods = metadata.code_challenge_methods_supported or []
        # PKCE protects an authorization code; a token the gateway obtains itself has none.
        if self.config.auth.kind == "oauth" and "S256" not in methods:
            raise OAuthError(
                f"authorization server {issuer} does not offer PKCE S256; refusing it", permanent=True
            )
        scope = " ".join(self.config.auth.scopes) or extract_scope_from_www_auth(challenge)
        if scope is None and resource.scopes_supported:
            scope = " ".join(resource.scopes_supported)
        return AuthServer(str(resource.resource), metadata, scope)

    async def _server_metadata(self, issuer: str, url: str) -> OAuthMetadata:
        allowed = self._egress.origins(issuer)
        notes = ""
        for candidate in build_oauth_authorization_server_metadata_discovery_urls(issuer, url):
            response = await self._send(create_oauth_metadata_request(candidate), allowed)
            found, metadata = await handle_auth_metadata_response(response)
            notes += redirect_note(candidate, response)
            if not found:
                break
            if metadata is not None:
                try:
                    validate_metadata_issuer(metadata, issuer)  # exact match, RFC 8414 section 3.3
                except OAuthFlowError as exc:
                    raise OAuthError(str(exc), permanent=True) from exc
                return metadata
        raise OAuthError(f"no authorization server metadata found for {issuer}{notes}", permanent=True)

    # -- the client ----------------------------------------------------------------------------

    async def client(self, server: AuthServer) -> OAuthClient:
        """This gateway's client at the server: configured, a metadata document, or registered once."""
        auth = self.config.auth
        credentials = self._store.credentials
        known = await credentials.oauth_client(self.config.name, server.issuer, self.redirect_uri)
        if known is not None:
            return known
        document = auth.client_metadata_url or self._document_url
        if auth.client_id is not None:
            client_id, secret = auth.client_id, auth.client_secret
        elif document is not None and server.metadata.client_id_metadata_document_supported:
            # Preferred over registering (MCP 2025-11-25): nothing to keep per server.
            client_id, secret = document, None
        else:
            client_id, secret = await self._register(server)
        made = OAuthClient(
            str(uuid.uuid4()), self.config.name, server.issuer, self.redirect_uri, client_id, secret
        )
        return await credentials.save_oauth_client(made, utc_now())

    async def _register(self, server: AuthServer) -> tuple[str, str | None]:
        if server.metadata.registration_endpoint is None:
            raise OAuthError(
                f"{server.issuer} offers no dynamic registration: configure auth.client_id for "
                f"upstream {self.config.name!r}",
                permanent=True,
            )
        metadata = OAuthClientMetadata(
            redirect_uris=[AnyUrl(self.redirect_uri)],
            token_endpoint_auth_method="none",
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            client_name=_CLIENT_NAME,
            # What the client may ever ask for, not what it asks for now: a server that holds a
            # client to its registered scope would refuse a later step-up to one it offers.
            scope=union_scopes(server.scope, " ".join(server.metadata.scopes_supported or ())),
        )
        request = create_client_registration_request(server.metadata, metadata, server.issuer)
        try:
            registered = await handle_registration_response(
                await self._send(request, self._egress.origins(server.issuer))
            )
        except OAuthRegistrationError as exc:
            raise OAuthError(str(exc)) from exc
        return registered.client_id or "", registered.client_secret

    # -- requests ------------------------------------------------------------------------------

    @staticmethod
    def scope_of(server: AuthServer, secret: dict[str, Any]) -> str | None:
        """The scope a flow asks for: its own (a step-up's), else what discovery chose."""
        scope = secret.get("scope")
        return scope if isinstance(scope, str) and scope else server.scope

    def authorize_url(self, server: AuthServer, client: OAuthClient, secret: dict[str, Any]) -> str:
        url: str = prepare_grant_uri(
            str(server.metadata.authorization_endpoint),
            client.client_id,
            "code",
            redirect_uri=client.redirect_uri,
            scope=self.scope_of(server, secret),
            state=secret["state"],
            code_challenge=create_s256_code_challenge(secret["code_verifier"]),  # type: ignore[no-untyped-call]
            code_challenge_method="S256",
            resource=server.resource,
        )
        return url

    @staticmethod
    def check_issuer(server: AuthServer, iss: str | None) -> None:
        """RFC 9207: an `iss` on the callback must be the server the flow went to."""
        try:
            validate_authorization_response_iss(iss, server.metadata)
        except OAuthFlowError as exc:
            raise OAuthError(str(exc), permanent=True) from exc

    async def exchange(self, server: AuthServer, client: OAuthClient, code: str, verifier: str) -> Tokens:
        return await self._token_request(
            server,
            client,
            "authorization_code",
            code=code,
            redirect_uri=client.redirect_uri,
            code_verifier=verifier,
        )

    async def refresh(self, server: AuthServer, client: OAuthClient, refresh_token: str) -> Tokens:
        tokens = await self._token_request(server, client, "refresh_token", refresh_token=refresh_token)
        # A server that does not rotate refresh tokens sends none back: the old one stays good.
        return (
            tokens
            if tokens.refresh_token
            else Tokens(tokens.access_token, refresh_token, tokens.expires_at, tokens.scope)
        )

    async def _token_request(
        self, server: AuthServer, client: OAuthClient, grant: str, **fields: str
    ) -> Tokens:
        auth: httpx2.Auth | None = None
        extra: dict[str, str] = {"resource": server.resource}
        methods = server.metadata.token_endpoint_auth_methods_supported or ["client_secret_basic"]
        if client.client_secret is None:
            extra["client_id"] = client.client_id  # a public client names itself in the body
        elif "client_secret_basic" in methods:
            auth = httpx2.BasicAuth(client.client_id, client.client_secret)
        else:
            extra.update(client_id=client.client_id, client_secret=client.client_secret)
        body = prepare_token_request(grant, **fields, **extra)
        request = httpx2.Request(
            "POST",
            str(server.metadata.token_endpoint),
            content=body.encode(),
            headers={"content-type": "application/x-www-form-urlencoded", "accept": "application/json"},
        )
        started = utc_now()
        response = await self._send(request, self._egress.origins(server.issuer), auth)
        if response.status_code != 200:
            raise _token_error(response, grant)
        try:
            token = OAuthToken.model_validate_json(response.content)
        except ValidationError as exc:
            raise OAuthError(
                f"the token endpoint sent an unusable token response: {exc.error_count()} errors"
            ) from None
        expires_at = None if token.expires_in is None else started + timedelta(seconds=token.expires_in)
        return Tokens(token.access_token, token.refresh_token, expires_at, token.scope)

    async def _send(
        self, request: httpx2.Request, allowed: frozenset[Origin], auth: httpx2.Auth | None = None
    ) -> httpx2.Response:
        """`request` sent by the egress rules, answered within `connect_s` (resolving included)."""
        try:
            with anyio.fail_after(self.config.timeouts.connect_s):
                return await self._egress.send(self._http, request, allowed, auth)
        except TimeoutError:
            raise OAuthError(
                f"{request.url.host} did not answer within {self.config.timeouts.connect_s:g}s"
            ) from None
        except httpx2.HTTPError as exc:
            raise OAuthError(f"could not reach {request.url.host}: {exc or type(exc).__name__}") from exc


def _token_error(response: httpx2.Response, grant: str) -> OAuthError:
    """RFC 6749 section 5.2: `invalid_grant` (or a 400/401 at all) cannot be retried; a 5xx can."""
    code = None
    try:
        body = response.json()
        code = body.get("error") if isinstance(body, dict) else None
    except ValueError:
        pass
    permanent = response.status_code in (400, 401) or code in (
        "invalid_grant",
        "invalid_client",
        "unauthorized_client",
    )
    detail = f" ({code})" if isinstance(code, str) else ""
    return OAuthError(f"the {grant} request got HTTP {response.status_code}{detail}", permanent=permanent)


def _describes(resource: str, url: str, found_at: str) -> bool:
    """Whether resource metadata naming `resource`, fetched from `found_at`, is this MCP URL's:
    the URL itself, or its origin when the metadata is at the origin's root well-known path
    (RFC 9728 section 3.1: a resource without a path), never another origin's."""
    if resource.rstrip("/") == url.rstrip("/"):
        return True
    mcp, named, where = httpx2.URL(url), httpx2.URL(resource), httpx2.URL(found_at)
    origin = (mcp.scheme, mcp.host, mcp.port)
    return (
        named.path in ("", "/")
        and not named.query
        and (named.scheme, named.host, named.port) == origin
        and (where.scheme, where.host, where.port) == origin
        and where.path == "/.well-known/oauth-protected-resource"
    )
