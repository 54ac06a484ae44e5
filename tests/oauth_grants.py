"""The grants a machine-to-machine client uses, for the tests' authorization server
(`tests.oauth`), and an enterprise IdP that exchanges id_tokens for ID-JAGs.

`AuthServer.machine_clients` are clients registered by hand (RFC 6749 section 2: no dynamic
registration for them) with one way to authenticate at the token endpoint:
`client_secret_basic`, `client_secret_post` or `private_key_jwt` (RFC 7523 section 2.2, the
assertion's `aud` the server's issuer, each `jti` accepted once). Two grants are served:

- `client_credentials` (RFC 6749 section 4.4): a token whose subject is the client itself;
- `urn:ietf:params:oauth:grant-type:jwt-bearer` (RFC 7523 section 2.1) with an ID-JAG from the
  trusted IdP (`AuthServer.trusted_idp`): typ `oauth-id-jag+jwt`, signed by the IdP, `aud` this
  server's issuer, `client_id` the authenticating client; the token's subject is the ID-JAG's.

Either token's audience is the `resource` of the request (or the ID-JAG's), exactly as for the
authorization code grant, and it carries no refresh token (RFC 6749 section 4.4.3). Every grant
made is kept in `AuthServer.machine_grants` for the tests to read.

The IdP (`running_idp`) signs id_tokens for the people a test names (`Idp.id_token`) and
serves the RFC 8693 token exchange of SEP-990: `subject_token_type` id_token,
`requested_token_type` id-jag, an `audience` and a `resource`; each exchange is kept in
`Idp.exchanges`. Signatures and their checks are joserfc's.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey
from joserfc.jwt import JWTClaimsRegistry
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.harness import base_url_of, listening_socket, serve_asgi_on

if TYPE_CHECKING:
    from tests.oauth import AuthServer

CLIENT_CREDENTIALS = "client_credentials"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
ID_JAG_TYPE = "urn:ietf:params:oauth:token-type:id-jag"
MACHINE_GRANTS = frozenset({CLIENT_CREDENTIALS, JWT_BEARER})
_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

Method = Literal["client_secret_basic", "client_secret_post", "private_key_jwt"]


@dataclass
class MachineClient:
    client_id: str
    method: Method
    secret: str | None = None
    public_key: ECKey | None = None  # private_key_jwt


@dataclass(frozen=True)
class MachineGrant:
    grant_type: str
    client_id: str
    method: Method
    resource: str | None
    scope: str | None
    subject: str
    jti: str | None = None  # private_key_jwt: the client assertion's


@dataclass
class TrustedIdp:
    issuer: str
    key: ECKey


def _error(code: str, status: int = 400) -> Response:
    return JSONResponse({"error": code}, status_code=status, headers=_NO_STORE)


def _authenticated(server: AuthServer, request: Request, form: FormData) -> tuple[MachineClient, str | None]:
    """The client the request authenticates as, and its assertion's jti; ValueError if none."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        client_id, _, secret = base64.b64decode(header[6:], validate=True).decode().partition(":")
        client = server.machine_clients.get(unquote(client_id))
        if client is None or client.method != "client_secret_basic" or client.secret != unquote(secret):
            raise ValueError("invalid_client")
        return client, None
    if form.get("client_assertion_type") == _ASSERTION_TYPE:
        assertion = str(form.get("client_assertion", ""))
        # Who it says it is from, read before its signature is checked with that client's key.
        said = json.loads(jws.extract_compact(assertion.encode()).payload)
        client = server.machine_clients.get(str(said.get("iss")) if isinstance(said, dict) else "")
        if client is None or client.method != "private_key_jwt" or client.public_key is None:
            raise ValueError("invalid_client")
        token = jwt.decode(assertion, client.public_key, algorithms=["ES256"])
        JWTClaimsRegistry(
            iss={"essential": True, "value": client.client_id},
            sub={"essential": True, "value": client.client_id},
            aud={"essential": True, "value": server.issuer},
            exp={"essential": True},
            jti={"essential": True},
        ).validate(token.claims)
        jti = str(token.claims["jti"])
        if jti in server.assertion_ids:
            raise ValueError("invalid_client")  # RFC 7523 section 3: a replayed assertion
        server.assertion_ids.add(jti)
        return client, jti
    client = server.machine_clients.get(str(form.get("client_id", "")))
    if client is None or client.method != "client_secret_post" or client.secret != form.get("client_secret"):
        raise ValueError("invalid_client")
    return client, None


async def machine_grant(server: AuthServer, request: Request, form: FormData) -> Response:
    """Answer a `client_credentials` or `jwt-bearer` token request (see the module docstring)."""
    try:
        client, jti = _authenticated(server, request, form)
    except (ValueError, KeyError, JoseError):
        return _error("invalid_client", 401)
    grant = str(form["grant_type"])
    resource = form.get("resource")
    resource = resource if isinstance(resource, str) else None
    scope = form.get("scope")
    scope = scope if isinstance(scope, str) else None
    subject = client.client_id
    if grant == JWT_BEARER:
        idp = server.trusted_idp
        if idp is None:
            return _error("unsupported_grant_type")
        try:
            jag = jwt.decode(str(form.get("assertion", "")), idp.key, algorithms=["ES256"])
            JWTClaimsRegistry(
                iss={"essential": True, "value": idp.issuer},
                aud={"essential": True, "value": server.issuer},
                client_id={"essential": True, "value": client.client_id},
                sub={"essential": True},
                exp={"essential": True},
            ).validate(jag.claims)
        except (ValueError, JoseError):
            return _error("invalid_grant")
        if jag.header.get("typ") != "oauth-id-jag+jwt":
            return _error("invalid_grant")
        if resource is not None and resource != jag.claims.get("resource"):
            return _error("invalid_target")
        resource, subject = str(jag.claims.get("resource")), str(jag.claims["sub"])
    granted = [s for s in (scope or " ".join(server.scopes)).split() if s in server.scopes]
    minted = server._mint(client.client_id, granted, resource, subject, with_refresh=False)
    server.machine_grants.append(
        MachineGrant(grant, client.client_id, client.method, resource, scope, subject, jti)
    )
    body: dict[str, Any] = minted.model_dump(mode="json", exclude_none=True)
    if server.machine_expires_in is not None:
        body["expires_in"] = server.machine_expires_in
    return JSONResponse(body, headers=_NO_STORE)


@dataclass(frozen=True)
class Exchange:
    subject_token_type: str | None
    requested_token_type: str | None
    audience: str | None
    resource: str | None
    subject: str | None  # the id_token's, when it was valid


@dataclass
class Idp:
    """A running IdP: its issuer, its signing key and the exchanges it was asked for."""

    issuer: str
    key: ECKey
    client_id: str  # the gateway's client here: every id_token's audience
    jag_client_id: str  # the client the ID-JAGs name (the gateway's at the upstream's server)
    exchanges: list[Exchange] = field(default_factory=list)

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    def id_token(self, subject: str, *, expired: bool = False) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.client_id,
            "iat": now - 120 if expired else now,
            "exp": now - 60 if expired else now + 3600,
        }
        return jwt.encode({"alg": "ES256"}, claims, self.key)

    def trusted(self) -> TrustedIdp:
        return TrustedIdp(self.issuer, self.key)


def _idp_app(idp: Idp) -> Starlette:
    async def token(request: Request) -> Response:
        form = await request.form()
        if form.get("grant_type") != TOKEN_EXCHANGE:
            return _error("unsupported_grant_type")
        fields = {
            name: form.get(name)
            for name in ("subject_token_type", "requested_token_type", "audience", "resource")
        }
        text = {name: value if isinstance(value, str) else None for name, value in fields.items()}
        subject = None
        try:
            id_token = jwt.decode(str(form.get("subject_token", "")), idp.key, algorithms=["ES256"])
            JWTClaimsRegistry(
                iss={"essential": True, "value": idp.issuer},
                aud={"essential": True, "value": idp.client_id},
                exp={"essential": True},
            ).validate(id_token.claims)
            subject = str(id_token.claims["sub"])
        except (ValueError, JoseError):
            pass
        idp.exchanges.append(Exchange(**text, subject=subject))
        if subject is None:
            return _error("invalid_grant")
        if text["subject_token_type"] != ID_TOKEN_TYPE or text["requested_token_type"] != ID_JAG_TYPE:
            return _error("invalid_request")
        if not text["audience"] or not text["resource"]:
            return _error("invalid_request")
        now = int(time.time())
        claims = {
            "iss": idp.issuer,
            "sub": subject,
            "aud": text["audience"],
            "resource": text["resource"],
            "client_id": idp.jag_client_id,
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "exp": now + 300,
        }
        jag = jwt.encode({"alg": "ES256", "typ": "oauth-id-jag+jwt"}, claims, idp.key)
        answer = {
            "access_token": jag,
            "issued_token_type": ID_JAG_TYPE,
            "token_type": "N_A",
            "expires_in": 300,
        }
        return JSONResponse(answer, headers=_NO_STORE)

    return Starlette(routes=[Route("/token", token, methods=["POST"])])


@asynccontextmanager
async def running_idp(client_id: str, jag_client_id: str) -> AsyncIterator[Idp]:
    """An IdP on an ephemeral loopback port."""
    with listening_socket() as sock:
        idp = Idp(base_url_of(sock), ECKey.generate_key("P-256"), client_id, jag_client_id)
        async with serve_asgi_on(sock, _idp_app(idp)):
            yield idp
