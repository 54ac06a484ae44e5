"""The authorization server's provider: what the `mcp` SDK's OAuth handlers (authorize, token,
register, revoke in `mcp.server.auth.handlers`) call to do the gateway's part.

The SDK handlers read and validate requests (PKCE S256 only, `response_type=code`, the code's
client, redirect URI and verifier, the refresh token's client) and word the RFC's errors; this
keeps clients, codes and tokens in the store (`store.SignInStore`, hashes only). An authorization
request does not end here: `authorize` parks it (`consent.py`) and sends the browser to the
consent page, which issues the code once the person approves (`complete_sign_in`).

The SDK handlers call the provider without the request they serve. What the provider needs of
it (the client's address, which bounds the requests it parks; the resource a token request
names, which must be the code's or the grant's, RFC 8707 section 2.2) is set by `SignInServer`
for that one request in `ASKING`, a context variable (each request runs in a task of its own).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import unquote

from mcp.server.auth.middleware.client_auth import AuthenticationError, ClientAuthenticator
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    AuthorizeError,
    OAuthAuthorizationServerProvider,
    RefreshToken,
    TokenError,
)
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from starlette.requests import Request

from gateway.config import HostSignInConfig
from gateway.signin.clients import Clients, HostClient, secret_digest
from gateway.signin.resource import SCOPE, ProtectedResource
from gateway.signin.tokens import ACCESS_PREFIX, REFRESH_PREFIX, new_secret
from store import IssuedToken, SignInCode, SignInStore, utc_now

__all__ = [
    "ASKING",
    "Asking",
    "ConsentStarter",
    "HostClientAuthenticator",
    "RedeemedCode",
    "SignInProvider",
    "SignInRefresh",
]

# Parks an authorization request (client, its parameters, the resource it is for, the client's
# address) for the person's consent; returns the consent page's URL, or None when that address
# has too many waiting (consent.py `Consents.start`).
ConsentStarter = Callable[[HostClient, AuthorizationParams, str, str | None], Awaitable[str | None]]
# Whether an organisation (by id) exists: `/mcp/{organisationId}` of another is no resource.
OrganisationCheck = Callable[[str], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Asking:
    """Of the request an SDK handler serves, what the provider needs and is not handed."""

    address: str | None = None  # the client's address
    resource: str | None = None  # a token request's `resource`, as this gateway names it


ASKING: ContextVar[Asking] = ContextVar("signin_asking")
_NOT_ASKED = Asking()

_PKCE_CHALLENGE_LENGTH = 43  # base64url of a SHA-256 digest, unpadded (RFC 7636 section 4.2)


class RedeemedCode(AuthorizationCode):
    """A code the store has redeemed (once) for this token request."""

    grant: SignInCode


class SignInRefresh(RefreshToken):
    grant_id: str


class SignInProvider(OAuthAuthorizationServerProvider[RedeemedCode, SignInRefresh, AccessToken]):
    def __init__(
        self,
        store: SignInStore,
        clients: Clients,
        resource: ProtectedResource,
        config: HostSignInConfig,
        consent_url: ConsentStarter,
        organisation_exists: OrganisationCheck,
    ) -> None:
        self._store = store
        self._clients = clients
        self._resource = resource
        self._config = config
        self._consent = consent_url
        self._organisation_exists = organisation_exists

    async def get_client(self, client_id: str) -> HostClient | None:
        return await self._clients.get(client_id, ASKING.get(_NOT_ASKED).address)

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        await self._clients.register(client_info)

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        assert isinstance(client, HostClient)
        if len(params.code_challenge) != _PKCE_CHALLENGE_LENGTH:
            raise AuthorizeError(
                "invalid_request", "code_challenge must be the S256 challenge (43 characters)"
            )
        if params.resource is None:
            resource = self._resource.url()  # a host that names none means the gateway's MCP URL
        else:
            known = self._resource.known(params.resource)
            organisation = None if known is None else self._resource.organisation_of(known)
            if known is None or (
                organisation is not None and not await self._organisation_exists(organisation)
            ):
                raise AuthorizeError("invalid_target", "resource is not an MCP URL of this gateway")
            resource = known
        url = await self._consent(client, params, resource, ASKING.get(_NOT_ASKED).address)
        if url is None:
            raise AuthorizeError(
                "temporarily_unavailable",
                "too many sign-ins from this address are waiting for an answer; try again later",
            )
        return url

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> RedeemedCode | None:
        # Redeemed as it is read: a code that fails the checks after this (its verifier, its
        # redirect URI) is spent all the same, so it cannot be tried again.
        redeemed = await self._store.redeem_code(authorization_code, utc_now())
        if redeemed is None:
            return None
        return RedeemedCode(
            code=authorization_code,
            scopes=[redeemed.scope],
            expires_at=redeemed.expires_at.timestamp(),
            client_id=redeemed.client_id,
            code_challenge=redeemed.code_challenge,
            redirect_uri=redeemed.redirect_uri,  # type: ignore[arg-type]  # pydantic reads a str
            redirect_uri_provided_explicitly=redeemed.redirect_uri_explicit,
            resource=redeemed.resource,
            grant=redeemed,
        )

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: RedeemedCode
    ) -> OAuthToken:
        _same_resource(authorization_code.resource)
        now = utc_now()
        access, refresh = self._new_tokens(now)
        await self._store.open_grant(authorization_code.code, str(uuid.uuid4()), access, refresh, now)
        return self._answer(access, refresh)

    async def load_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: str
    ) -> SignInRefresh | None:
        signed_in = await self._store.refreshable(refresh_token, utc_now())
        if signed_in is None:
            return None
        return SignInRefresh(
            token=refresh_token,
            client_id=signed_in.grant.client_id,
            scopes=[signed_in.grant.scope],
            expires_at=int(signed_in.expires_at.timestamp()),
            resource=signed_in.grant.resource,
            grant_id=signed_in.grant.id,
        )

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: SignInRefresh, scopes: list[str]
    ) -> OAuthToken:
        _same_resource(refresh_token.resource)
        now = utc_now()
        access, refresh = self._new_tokens(now)
        if not await self._store.rotate(refresh_token.token, access, refresh, now):
            raise TokenError("invalid_grant", "the refresh token was used already, revoked or expired")
        return self._answer(access, refresh)

    async def load_access_token(self, token: str) -> AccessToken | None:
        signed_in = await self._store.signed_in(token, utc_now())
        if signed_in is None:
            return None
        return AccessToken(
            token=token,
            client_id=signed_in.grant.client_id,
            scopes=[signed_in.grant.scope],
            expires_at=int(signed_in.expires_at.timestamp()),
            resource=signed_in.grant.resource,
        )

    async def revoke_token(self, token: AccessToken | SignInRefresh) -> None:
        """RFC 7009: either token ends the whole grant (its access and refresh tokens)."""
        grant = await self._store.grant_of(token.token)
        if grant is not None:
            await self._store.revoke_grant(grant.id, "revoked", utc_now())

    def _new_tokens(self, wall: datetime) -> tuple[IssuedToken, IssuedToken]:
        access = IssuedToken(
            new_secret(ACCESS_PREFIX), wall + timedelta(seconds=self._config.access_token_ttl_s)
        )
        refresh = IssuedToken(
            new_secret(REFRESH_PREFIX), wall + timedelta(seconds=self._config.refresh_token_ttl_s)
        )
        return access, refresh

    def _answer(self, access: IssuedToken, refresh: IssuedToken) -> OAuthToken:
        return OAuthToken(
            access_token=access.secret,
            token_type="Bearer",
            expires_in=self._config.access_token_ttl_s,
            scope=SCOPE,
            refresh_token=refresh.secret,
        )


def _same_resource(granted: str | None) -> None:
    """RFC 8707 section 2.2: a token request may name only the resource the code (or the grant)
    is for; tokens for another are `invalid_target` (an MCP URL of this gateway, or not)."""
    asked = ASKING.get(_NOT_ASKED).resource
    if asked is not None and asked != granted:
        raise TokenError("invalid_target", "resource is not the one this sign-in was approved for")


class HostClientAuthenticator(ClientAuthenticator):
    """The SDK's client authentication at the token and revocation endpoints, against the hash of
    the client's secret (the gateway never keeps the secret itself): `client_secret_post` or
    `client_secret_basic` for a client that has one, nothing for a public client."""

    def __init__(self, provider: SignInProvider) -> None:
        super().__init__(provider)
        self._clients = provider

    async def authenticate_request(self, request: Request) -> OAuthClientInformationFull:
        form = await request.form()
        client_id = form.get("client_id")
        basic = _basic_credentials(request.headers.get("authorization", ""))
        if not isinstance(client_id, str) or not client_id:
            if basic is None:
                raise AuthenticationError("Missing client_id")
            client_id = basic[0]
        if basic is not None and basic[0] != client_id:
            raise AuthenticationError("Client ID mismatch in Basic auth")
        client = await self._clients.get_client(client_id)
        if client is None:
            # RFC 6749 5.2 invalid_client: a host told this registers again (claude.ai does).
            raise AuthenticationError("Unknown client_id: register the client again")
        if client.secret_hash is None:
            return client
        posted = form.get("client_secret")
        secret = basic[1] if basic is not None else posted if isinstance(posted, str) else None
        if not secret or not hmac.compare_digest(secret_digest(secret), client.secret_hash):
            raise AuthenticationError("Invalid client credentials")
        return client


def basic_client_id(header: str) -> str | None:
    """The client id of a well-formed `Authorization: Basic` header, else None (a malformed one
    is refused by `HostClientAuthenticator` with its reason)."""
    try:
        basic = _basic_credentials(header)
    except AuthenticationError:
        return None
    return None if basic is None else basic[0]


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise AuthenticationError("Invalid Basic authentication header") from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise AuthenticationError("Invalid Basic authentication header")
    return unquote(client_id), unquote(secret)
