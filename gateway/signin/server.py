"""The authorization server as the running gateway holds it: the `mcp` SDK's OAuth handlers over
`SignInProvider`, the consent page, the metadata documents, and the per-address registration
limit; built in the app's lifespan and served by the routes `routes.py` declares.

Endpoints (the issuer is `public_url`, an origin, so RFC 8414 metadata is at its root):
`/signin/authorize`, `/signin/consent`, `/signin/token`, `/signin/register`, `/signin/revoke`.

Each endpoint reads its form and bounds every field (`_fields.py`) before the SDK handler sees
the request, so an oversized one is a plain `invalid_request` (never echoed to the client, never
kept), and sets what the provider needs of the request in `provider.ASKING`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx2
from mcp.server.auth.handlers.authorize import AuthorizationHandler
from mcp.server.auth.handlers.register import RegistrationHandler
from mcp.server.auth.handlers.token import TokenHandler
from mcp.server.auth.middleware.client_auth import AuthenticationError
from mcp.server.auth.provider import AccessToken, construct_redirect_uri
from mcp.server.auth.settings import ClientRegistrationOptions
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message

from gateway.background import every_once
from gateway.config import HostSignInConfig, is_loopback_host
from gateway.errors import AuthThrottled, SignInRefused
from gateway.host.auth import principal_of
from gateway.principal import Principal
from gateway.signin._fields import AUTHORIZE_LIMITS, TOKEN_LIMITS, oversized, read_form
from gateway.signin._rate import PerAddress
from gateway.signin.clients import Clients
from gateway.signin.consent import CONSENT_PATH, Consents, KeyCheck
from gateway.signin.documents import MAX_DOCUMENT_BYTES, ClientDocuments, is_document_url
from gateway.signin.oidc import OidcSignIn, SignedInUser, identity_key
from gateway.signin.provider import (
    ASKING,
    Asking,
    HostClientAuthenticator,
    SignInProvider,
    SignInRefresh,
    basic_client_id,
)
from gateway.signin.resource import SCOPE, ProtectedResource
from store import Sealer, SignInStore, Store, StoreError, utc_now

__all__ = ["SignInServer"]

logger = logging.getLogger(__name__)

AUTHORIZE_PATH = "/signin/authorize"
TOKEN_PATH = "/signin/token"
REGISTER_PATH = "/signin/register"
REVOKE_PATH = "/signin/revoke"
PRUNE_LEASE = "maintenance/signin"
PRUNE_INTERVAL_S = 3600.0
_NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}
_GRANT_TYPES = ("authorization_code", "refresh_token")
_CLIENT_AUTH_METHODS = ["none", "client_secret_post", "client_secret_basic"]


class SignInServer:
    def __init__(
        self,
        config: HostSignInConfig,
        public_url: str,
        store: Store,
        http: httpx2.AsyncClient,
        check_key: KeyCheck,
        sealer: Sealer,
    ) -> None:
        self.config = config
        self.resource = ProtectedResource(public_url)
        self._store: SignInStore = store.signin
        self._coordination = store.coordination
        on_loopback = is_loopback_host(urlsplit(public_url).hostname or "")
        self.clients = Clients(self._store, ClientDocuments(http, gateway_on_loopback=on_loopback), config)
        oidc = None
        if config.oidc:
            providers = OidcSignIn(
                config.oidc, public_url=public_url, http=http, sealer=sealer, state_ttl_s=config.consent_ttl_s
            )

            async def identify(user: SignedInUser) -> Principal:
                return principal_of(await identity_key(store, user))

            oidc = (providers, identify)
        self.consents = Consents(self._store, self.resource, config, check_key, oidc=oidc)

        async def organisation_exists(organisation_id: str) -> bool:
            return await store.get_organisation(organisation_id) is not None

        self.provider = SignInProvider(
            self._store, self.clients, self.resource, config, self.consents.start, organisation_exists
        )
        self._authenticator = authenticator = HostClientAuthenticator(self.provider)
        self._authorize = AuthorizationHandler(self.provider)
        self._token = TokenHandler(self.provider, authenticator)
        # Any requested scope registers (RFC 7591 section 2 lets the server replace metadata):
        # hosts name scopes of their own, and every sign-in gets the one there is (clients.py).
        self._register = RegistrationHandler(
            self.provider, ClientRegistrationOptions(enabled=True, default_scopes=[SCOPE])
        )
        self._registrations = PerAddress(config.registrations_per_hour)
        self.metadata = self._metadata()

    def _metadata(self) -> dict[str, Any]:
        """RFC 8414 authorization server metadata (served for OpenID discovery too)."""
        issuer = self.resource.issuer
        return {
            "issuer": issuer,
            "authorization_endpoint": issuer + AUTHORIZE_PATH,
            "token_endpoint": issuer + TOKEN_PATH,
            "registration_endpoint": issuer + REGISTER_PATH,
            "revocation_endpoint": issuer + REVOKE_PATH,
            "scopes_supported": [SCOPE],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": list(_GRANT_TYPES),
            "token_endpoint_auth_methods_supported": _CLIENT_AUTH_METHODS,
            "revocation_endpoint_auth_methods_supported": _CLIENT_AUTH_METHODS,
            "code_challenge_methods_supported": ["S256"],
            "client_id_metadata_document_supported": True,
            "authorization_response_iss_parameter_supported": True,
        }

    async def authorize(self, request: Request) -> Response:
        address = _address(request)
        try:
            params = request.query_params if request.method == "GET" else await read_form(request)
        except SignInRefused as exc:
            return _error(400, exc.error, exc.description)
        problem = oversized(params, AUTHORIZE_LIMITS)
        if problem is not None:
            # Answered here, not at the client's redirect URI: the SDK would echo the state back.
            return _error(400, "invalid_request", problem)
        client_id = params.get("client_id")
        if isinstance(client_id, str) and is_document_url(client_id):
            try:  # fetched (within the limits) here, so that a refusal can say to wait
                await self.clients.find(client_id, address)
            except AuthThrottled as exc:
                throttled = _error(
                    429, "invalid_request", "too many client metadata documents to fetch now; try again later"
                )
                throttled.headers["retry-after"] = str(exc.retry_after_s)
                return throttled
        asking = ASKING.set(Asking(address=address))
        try:
            response = await self._authorize.handle(request)
        finally:
            ASKING.reset(asking)
        location = response.headers.get("location")
        consent = self.resource.public_url + CONSENT_PATH
        if location is not None and not location.startswith(consent):
            # An error the SDK handler sends back to the client's (checked) redirect URI: with the
            # issuer, as every authorization response of this server (RFC 9207 section 2).
            response.headers["location"] = construct_redirect_uri(location, iss=self.resource.issuer)
        return response

    async def token(self, request: Request) -> Response:
        try:
            form = await read_form(request)
        except SignInRefused as exc:
            return _error(400, exc.error, exc.description)
        problem = oversized(form, TOKEN_LIMITS)
        if problem is not None:
            return _error(400, "invalid_request", problem)
        grant_type = form.get("grant_type")
        if isinstance(grant_type, str) and grant_type not in _GRANT_TYPES:
            # The SDK would call an unknown grant type a malformed request; RFC 6749 5.2 names it.
            return _error(
                400, "unsupported_grant_type", "grant_type must be authorization_code or refresh_token"
            )
        resource = form.get("resource")
        known = self.resource.known(resource) if isinstance(resource, str) else None
        if isinstance(resource, str) and known is None:
            return _error(400, "invalid_target", "resource is not an MCP URL of this gateway (RFC 8707)")
        client_id = form.get("client_id")
        named = basic_client_id(request.headers.get("authorization", ""))
        if (not isinstance(client_id, str) or not client_id) and named is not None:
            # RFC 6749 2.3.1: a client_secret_basic client is named by its header alone; the
            # SDK's token request model wants client_id in the body, so it is added there.
            request = _with_form(request, [*form.multi_items(), ("client_id", named)])
        asking = ASKING.set(Asking(address=_address(request), resource=known))
        try:
            answer: Response = await self._token.handle(request)
        finally:
            ASKING.reset(asking)
        return answer

    async def register(self, request: Request) -> Response:
        wait = self._registrations.spend(_address(request))
        if wait is not None:
            response = _error(429, "invalid_request", "too many client registrations from this address")
            response.headers["retry-after"] = str(wait)
            return response
        # As large as a client metadata document may be: a registration is the same metadata.
        if len(await request.body()) > MAX_DOCUMENT_BYTES:
            return _error(
                400, "invalid_client_metadata", f"the registration is larger than {MAX_DOCUMENT_BYTES} bytes"
            )
        return await self._register.handle(request)

    async def revoke(self, request: Request) -> Response:
        try:
            form = await read_form(request)
        except SignInRefused as exc:
            return _error(400, exc.error, exc.description)
        problem = oversized(form, TOKEN_LIMITS)
        if problem is not None:
            return _error(400, "invalid_request", problem)
        asking = ASKING.set(Asking(address=_address(request)))
        try:
            client = await self._authenticator.authenticate_request(request)
        except AuthenticationError as exc:
            # RFC 7009 2.2.1 answers a client that fails to authenticate as RFC 6749 5.2 does:
            # invalid_client (the SDK handler would say unauthorized_client).
            return _error(401, "invalid_client", exc.message)
        finally:
            ASKING.reset(asking)
        # Not the SDK's RevocationHandler past this point: its request model requires a
        # client_secret field (and a client_id in the form), which refuses a public client, and a
        # client that authenticates with Basic, revoking as RFC 7009 section 2.1 has them do.
        token, hint = form.get("token"), form.get("token_type_hint")
        if not isinstance(token, str) or not token:
            return _error(400, "invalid_request", "token is required")
        found: AccessToken | SignInRefresh | None = None
        refresh_first = hint == "refresh_token"
        for refresh in (refresh_first, not refresh_first):
            found = await (
                self.provider.load_refresh_token(client, token)
                if refresh
                else self.provider.load_access_token(token)
            )
            if found is not None:
                break
        if found is not None and found.client_id == client.client_id:
            await self.provider.revoke_token(found)
        # RFC 7009 section 2.2: 200 whether or not the token was known (or the client's).
        return Response(status_code=200, headers=_NO_STORE)

    def resource_metadata(self, organisation: str | None) -> Response:
        return JSONResponse(self.resource.metadata(organisation), headers={"cache-control": "max-age=3600"})

    def server_metadata(self) -> Response:
        return JSONResponse(self.metadata, headers={"cache-control": "max-age=3600"})

    async def maintain(self, ran: Callable[[str], None] | None = None) -> None:
        """Prune every `PRUNE_INTERVAL_S`, on one replica at a time (the holder of `PRUNE_LEASE`)."""
        await every_once(
            self._coordination, PRUNE_LEASE, PRUNE_INTERVAL_S, "pruning sign-ins", self.prune, ran
        )

    async def prune(self) -> None:
        """Forget expired codes and tokens, and registered clients long unused."""
        now = utc_now()
        try:
            gone = await self._store.prune(now, now - timedelta(seconds=self.config.unused_client_ttl_s))
        except StoreError as exc:
            logger.warning("sign-in: pruning expired codes and tokens failed: %s", exc)
            return
        if gone:
            logger.info("sign-in: pruned %d expired code(s), token(s), grant(s) and client(s)", gone)


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status, headers=_NO_STORE)


def _with_form(request: Request, fields: list[tuple[str, Any]]) -> Request:
    """The same request with this urlencoded form as its body."""
    body = urlencode([(name, value) for name, value in fields if isinstance(value, str)]).encode()

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(k, v) for k, v in request.scope["headers"] if k not in (b"content-length", b"content-type")]
    headers += [
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"content-length", str(len(body)).encode()),
    ]
    return Request({**request.scope, "headers": headers}, receive)
