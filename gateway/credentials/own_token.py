"""The gateway's own token for an upstream: machine to machine, the same for every caller.

Two ways to get one, both ending at the upstream's authorization server's token endpoint:

- `client_credentials` (RFC 6749 section 4.4; the MCP extension
  `io.modelcontextprotocol/oauth-client-credentials`, SEP-1046): the gateway authenticates as
  its client there, with `client_secret_basic`, `client_secret_post` or `private_key_jwt`
  (RFC 7523 section 2.2: a JWT signed with the configured private key, `iss` and `sub` the
  client id, `aud` the server's issuer).
- `enterprise_managed` (`io.modelcontextprotocol/enterprise-managed-authorization`, SEP-990):
  an identity assertion (an OpenID Connect id_token from the organisation's IdP) is exchanged
  at the IdP (RFC 8693) for an ID-JAG, an identity assertion authorization grant naming the
  upstream's authorization server as audience and the upstream as resource, which the gateway
  then presents there in a JWT bearer grant (RFC 7523 section 2.1), authenticated as above.
  The assertion is read from `idp.assertion_file` for each exchange: whatever renews the
  id_token (a sidecar, a workload identity agent) writes it there.

The token endpoint is the configured one, else the one the upstream's RFC 9728 metadata leads
to (`OAuthUpstream.server`, the discovery per-user OAuth uses), with its `resource` sent as
RFC 8707 asks. The client authentication and the JWT signing are authlib's; every request
obeys `egress.py`. A token is kept in memory until shortly before it expires, then asked for
again (client credentials have no refresh token, RFC 6749 section 4.4.3); an upstream's 401 to
it drops it (`rejected`), and the next request asks for a new one. Tokens are never logged.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import anyio
import httpx2
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc6749.parameters import prepare_token_request
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from pydantic import BaseModel, ValidationError

from gateway.config import UpstreamConfig, signing_key
from gateway.credentials.egress import Egress, Origin, origin_of
from gateway.credentials.oauth import OAuthUpstream
from gateway.errors import OAuthError

__all__ = ["ID_JAG_TOKEN_TYPE", "ID_TOKEN_TYPE", "JWT_BEARER", "TOKEN_EXCHANGE", "OwnToken"]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
ID_JAG_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id-jag"
_RENEW_AHEAD_S = 60.0  # asked for again this long before it expires
_MAX_ASSERTION_BYTES = 64 * 1024


class _TokenAnswer(BaseModel):
    """A token endpoint's answer (RFC 6749 section 5.1, RFC 8693 section 2.2.1)."""

    access_token: str
    token_type: str | None = None
    expires_in: int | None = None
    issued_token_type: str | None = None


@dataclass(frozen=True, slots=True)
class _Held:
    access_token: str
    obtained_at: float  # monotonic
    renew_at: float | None  # monotonic; None: until the upstream refuses it


@dataclass(frozen=True, slots=True)
class _Target:
    """Where the token comes from: the endpoint, what the token is for, and the JWT audience."""

    token_endpoint: str
    resource: str
    audience: str  # the authorization server's issuer (the token endpoint when not discovered)
    scope: str | None
    allowed: frozenset[Origin]


class OwnToken:
    """The gateway's token for one `client_credentials` or `enterprise_managed` upstream."""

    def __init__(self, config: UpstreamConfig, http: httpx2.AsyncClient, discovery: OAuthUpstream) -> None:
        assert config.url is not None and config.auth.own_token
        self.config = config
        self._http = http
        self._discovery = discovery
        self._egress = Egress(config.name, config.url, config.auth.allow_private_addresses)
        self._held: _Held | None = None
        self._lock = anyio.Lock()

    async def headers(self) -> Mapping[str, str]:
        """What to send the upstream: its bearer token, asked for if there is none good."""
        held = self._held
        if held is None or _due(held):
            async with self._lock:  # one request for a token at a time; the others use it
                held = self._held
                if held is None or _due(held):
                    try:
                        held = self._held = await self._obtain()
                    except OAuthError as exc:
                        raise OAuthError(
                            f"upstream {self.config.name!r}: no token of the gateway's own: {exc}",
                            permanent=exc.permanent,
                        ) from exc
        return {"authorization": f"Bearer {held.access_token}"}

    def rejected(self, since: float) -> None:
        """The upstream refused a request sent at monotonic time `since` or later: drop the
        token if it was held then (a newer one was not what it refused)."""
        held = self._held
        if held is not None and held.obtained_at <= since:
            self._held = None

    async def _obtain(self) -> _Held:
        target = await self._target()
        auth = self.config.auth
        fields: dict[str, str] = {"resource": target.resource}
        if auth.scopes or target.scope:
            fields["scope"] = " ".join(auth.scopes) or target.scope or ""
        if auth.kind == "enterprise_managed":
            grant = JWT_BEARER
            fields["assertion"] = await self._id_jag(target)
        else:
            grant = "client_credentials"
        started = time.monotonic()
        answer = await self._token_request(
            target.token_endpoint, grant, fields, self._client_auth(target), target.allowed, "token endpoint"
        )
        renew_at = None
        if answer.expires_in is not None:
            renew_at = started + max(answer.expires_in - _RENEW_AHEAD_S, answer.expires_in / 2)
        return _Held(answer.access_token, started, renew_at)

    async def _target(self) -> _Target:
        auth = self.config.auth
        idp_origins = set() if auth.idp is None else {origin_of(httpx2.URL(auth.idp.token_endpoint))}
        if auth.token_endpoint is not None:
            assert self.config.url is not None
            configured = origin_of(httpx2.URL(auth.token_endpoint))
            allowed = frozenset({*self._egress.origins(), configured, *idp_origins})
            # private_key_jwt's aud: the token endpoint, which RFC 7523 allows; an ID-JAG's is
            # the issuer the config names (`idp.audience`, required with a token_endpoint).
            audience = auth.token_endpoint if auth.idp is None else auth.idp.audience or auth.token_endpoint
            return _Target(auth.token_endpoint, self.config.url, audience, None, allowed)
        server = await self._discovery.server()
        if server.metadata.token_endpoint is None:
            raise OAuthError(f"authorization server {server.issuer} names no token endpoint", permanent=True)
        endpoint = str(server.metadata.token_endpoint)
        allowed = frozenset({*self._egress.origins(server.issuer), *idp_origins})
        audience = server.issuer if auth.idp is None else auth.idp.audience or server.issuer
        return _Target(endpoint, server.resource, audience, server.scope, allowed)

    def _client_auth(self, target: _Target) -> ClientAuth:
        auth = self.config.auth
        assert auth.client_id is not None
        if auth.token_endpoint_auth_method == "private_key_jwt":
            assert auth.private_key is not None
            found = signing_key(auth.private_key)
            assert found is not None, "checked when the config was loaded"
            key, usual_alg = found
            # aud: the server's issuer, as RFC 7523bis and the MCP extension ask (not authlib's
            # default, the token endpoint, which servers following them refuse).
            signer = PrivateKeyJWT(token_endpoint=target.audience, alg=auth.signing_alg or usual_alg)
            return ClientAuth(auth.client_id, key, signer)
        return ClientAuth(auth.client_id, auth.client_secret, auth.token_endpoint_auth_method)

    async def _id_jag(self, target: _Target) -> str:
        """An ID-JAG for the upstream, from the IdP, in exchange for the identity assertion."""
        idp = self.config.auth.idp
        assert idp is not None
        fields = {
            "subject_token": await self._assertion(),
            "subject_token_type": ID_TOKEN_TYPE,
            "requested_token_type": ID_JAG_TOKEN_TYPE,
            "audience": target.audience,
            "resource": target.resource,
        }
        if target.scope or self.config.auth.scopes:
            fields["scope"] = " ".join(self.config.auth.scopes) or target.scope or ""
        method = "client_secret_basic" if idp.client_secret else "none"
        client = ClientAuth(idp.client_id, idp.client_secret, method)
        answer = await self._token_request(
            idp.token_endpoint, TOKEN_EXCHANGE, fields, client, target.allowed, "IdP"
        )
        if answer.issued_token_type not in (None, ID_JAG_TOKEN_TYPE):
            raise OAuthError(f"the IdP issued a {answer.issued_token_type}, not an ID-JAG", permanent=True)
        return answer.access_token

    async def _assertion(self) -> str:
        idp = self.config.auth.idp
        assert idp is not None
        try:
            raw = await anyio.Path(idp.assertion_file).read_bytes()
        except OSError as exc:
            why = exc.strerror or exc
            raise OAuthError(f"cannot read the identity assertion {idp.assertion_file}: {why}") from exc
        text = raw[:_MAX_ASSERTION_BYTES].decode("ascii", errors="replace").strip()
        if not text or len(raw) > _MAX_ASSERTION_BYTES:
            raise OAuthError(f"{idp.assertion_file} holds no identity assertion")
        return text

    async def _token_request(
        self,
        endpoint: str,
        grant: str,
        fields: Mapping[str, str],
        client: ClientAuth,
        allowed: frozenset[Origin],
        what: str,
    ) -> _TokenAnswer:
        body = prepare_token_request(grant, **fields)
        headers = {"content-type": "application/x-www-form-urlencoded", "accept": "application/json"}
        endpoint, headers, body = client.prepare("POST", endpoint, headers, body)  # type: ignore[no-untyped-call]
        request = httpx2.Request("POST", endpoint, content=body.encode(), headers=headers)
        timeout = self.config.timeouts.connect_s
        try:
            with anyio.fail_after(timeout):
                response = await self._egress.send(self._http, request, allowed)
        except TimeoutError:
            raise OAuthError(f"the {what} {request.url.host} did not answer within {timeout:g}s") from None
        except httpx2.HTTPError as exc:
            raise OAuthError(
                f"could not reach the {what} {request.url.host}: {exc or type(exc).__name__}"
            ) from exc
        if response.status_code != 200:
            raise _refusal(response, grant, what)
        try:
            return _TokenAnswer.model_validate_json(response.content)
        except ValidationError as exc:
            raise OAuthError(
                f"the {what} sent an unusable token response: {exc.error_count()} errors"
            ) from None


def _due(held: _Held) -> bool:
    return held.renew_at is not None and time.monotonic() >= held.renew_at


def _refusal(response: httpx2.Response, grant: str, what: str) -> OAuthError:
    """The server's error code, never its description (it may echo what was sent)."""
    code = None
    try:
        body = response.json()
        code = body.get("error") if isinstance(body, dict) else None
    except ValueError:
        pass
    detail = f" ({code})" if isinstance(code, str) and code.replace("_", "").isalnum() else ""
    return OAuthError(
        f"the {what} refused the {grant} request: HTTP {response.status_code}{detail}",
        permanent=response.status_code in (400, 401),
    )
