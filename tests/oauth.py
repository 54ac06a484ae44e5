"""A real OAuth 2.1 authorization server and an MCP upstream that accepts only its own tokens.

Both are built from the `mcp` SDK's server auth pieces and served by uvicorn on loopback ports
inside the test's event loop, like everything in `tests.harness`.

The authorization server (`running_auth_server`) does RFC 8414 metadata, RFC 7591 dynamic client
registration (public `none` and confidential `client_secret_post`/`client_secret_basic` clients),
the authorization code grant with PKCE S256 (always required, even when `advertise_pkce=False`
leaves it out of the metadata), RFC 8707 resource indicators, refresh and RFC 7009 revocation.
`/authorize` redirects to a consent page on the server; a test approves it for a user with
`consent()`, which ends at the redirect to the client's `redirect_uri` carrying `code`, `state`
and `iss` (RFC 9207).

Resource indicators are strict, the way the MCP authorization spec asks clients to send them:
the `resource` of the authorization request is stored with the code, the token request must
repeat it exactly (omitting it when the authorization request did), and it becomes the access
token's audience. A refresh keeps the audience; a refresh request naming another resource is
refused with `invalid_target`.

Refresh tokens rotate by default: each successful refresh returns a new refresh token and the
one presented stops working (`rotate_refresh_tokens=False` keeps one refresh token for good).
Access tokens issued earlier stay valid until they expire.

The protected upstream (`serve_protected_upstream`) is an SDK `MCPServer` over Streamable HTTP
whose RFC 9728 resource is its own `/mcp` URL. It verifies tokens against the authorization
server's memory (same process), refusing with 401 and `WWW-Authenticate: Bearer ...
resource_metadata="..."` any token that is unknown, revoked, expired, or minted for another
audience.
"""

from __future__ import annotations

import base64
import html
import json
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote, urlencode, urljoin

import anyio
import httpx2
from mcp.server.auth.handlers.token import TokenHandler
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.middleware.client_auth import ClientAuthenticator
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    OAuthAuthorizationServerProvider,
    RefreshToken,
    TokenError,
    construct_redirect_uri,
)
from mcp.server.auth.routes import TOKEN_PATH, build_metadata, create_auth_routes
from mcp.server.auth.settings import AuthSettings, ClientRegistrationOptions, RevocationOptions
from mcp.server.mcpserver import MCPServer
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.harness import base_url_of, listening_socket, serve_asgi_on
from tests.oauth_grants import MACHINE_GRANTS, MachineClient, MachineGrant, TrustedIdp, machine_grant
from tests.upstreams import ModernOnly

METADATA_PATH = "/.well-known/oauth-authorization-server"
CONSENT_PATH = "/consent"
CODE_TTL_S = 300
DEFAULT_SCOPES = ("read", "write")

# The SDK's token handler does not hand the token request's `resource` to the provider, so the
# endpoint wrapper passes it along here for the provider to compare with the code's.
_token_request_resource: ContextVar[str | None] = ContextVar("_token_request_resource", default=None)

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass
class _PendingConsent:
    client_id: str
    params: AuthorizationParams


@dataclass
class AuthServer:
    """A running authorization server; its state is plain memory that tests may read and poke."""

    issuer: str
    access_ttl_s: int
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    rotate_refresh_tokens: bool = True
    registrations: int = 0
    refreshes: int = 0
    refresh_requests: int = 0  # refresh requests that reached the server, refused ones included
    # When set, each refresh request waits for it before its token is looked up: a refresh that
    # takes as long as the test likes, for races between gateways.
    hold_refreshes: anyio.Event | None = None
    # When set, the token endpoint answers only this HTTP status (e.g. 503), before looking at
    # the request: an outage, as opposed to a grant the server has refused.
    fail_token_endpoint_with: int | None = None
    clients: dict[str, OAuthClientInformationFull] = field(default_factory=dict)
    access_tokens: dict[str, AccessToken] = field(default_factory=dict)
    refresh_tokens: dict[str, RefreshToken] = field(default_factory=dict)
    codes: dict[str, AuthorizationCode] = field(default_factory=dict)
    pending: dict[str, _PendingConsent] = field(default_factory=dict)
    issued: list[str] = field(default_factory=list)  # every token ever minted, for leak checks
    # Client ID metadata documents: a client id that is a URL names its own metadata document,
    # fetched when the client is first seen (when the server was started to support them).
    metadata_documents: bool = False
    documents_fetched: list[str] = field(default_factory=list)
    # Scopes never granted, though asked for and consented to (a person unticking them, or a
    # policy of the server's): tokens carry the rest, and say so in their `scope`.
    withheld: tuple[str, ...] = ()
    # Machine-to-machine clients and the grants they made (`tests.oauth_grants`).
    machine_clients: dict[str, MachineClient] = field(default_factory=dict)
    machine_grants: list[MachineGrant] = field(default_factory=list)
    assertion_ids: set[str] = field(default_factory=set)  # private_key_jwt jtis seen
    trusted_idp: TrustedIdp | None = None  # whose ID-JAGs the jwt-bearer grant takes
    # When set, what those grants' answers say of `expires_in` (the token lives access_ttl_s).
    machine_expires_in: int | None = None

    @property
    def metadata_url(self) -> str:
        return f"{self.issuer}{METADATA_PATH}"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}{TOKEN_PATH}"

    def expire_access_tokens(self) -> None:
        """Every access token issued so far is expired from now on."""
        past = int(time.time()) - 1
        for token in self.access_tokens.values():
            # Not 0: the SDK's bearer middleware reads a falsy expiry as "never expires".
            token.expires_at = past

    def revoke_refresh_tokens(self) -> None:
        """Every refresh token issued so far is revoked: refreshing gives `invalid_grant`."""
        self.refresh_tokens.clear()

    def token_users(self) -> dict[str, str]:
        """The user each live (unexpired, unrevoked) access token was issued for, by token."""
        now = time.time()
        return {
            token.token: token.subject or ""
            for token in self.access_tokens.values()
            if token.expires_at is not None and token.expires_at > now
        }

    def live_access_token(self, token: str, *, audience: str) -> AccessToken | None:
        """The access token if it is known, unexpired and minted exactly for `audience`."""
        access = self.access_tokens.get(token)
        if access is None or access.expires_at is None or access.expires_at <= time.time():
            return None
        if access.resource != audience:
            return None
        return access

    def _mint(
        self,
        client_id: str,
        scopes: list[str],
        resource: str | None,
        subject: str | None,
        *,
        keep_refresh_token: str | None = None,
        with_refresh: bool = True,
    ) -> OAuthToken:
        access = AccessToken(
            token=f"at_{secrets.token_urlsafe(32)}",
            client_id=client_id,
            scopes=scopes,
            expires_at=int(time.time()) + self.access_ttl_s,
            resource=resource,
            subject=subject,
            # The SDK binds MCP sessions to (client, issuer, subject), so a refreshed token for
            # the same user keeps working on the session its predecessor opened.
            claims={"iss": self.issuer},
        )
        self.access_tokens[access.token] = access
        self.issued.append(access.token)
        refresh_token = keep_refresh_token
        if refresh_token is None and with_refresh:
            refresh = RefreshToken(
                token=f"rt_{secrets.token_urlsafe(32)}",
                client_id=client_id,
                scopes=scopes,
                resource=resource,
                subject=subject,
            )
            self.refresh_tokens[refresh.token] = refresh
            self.issued.append(refresh.token)
            refresh_token = refresh.token
        return OAuthToken(
            access_token=access.token,
            token_type="Bearer",
            expires_in=self.access_ttl_s,
            scope=" ".join(scopes),
            refresh_token=refresh_token,
        )


class _Provider(OAuthAuthorizationServerProvider[AuthorizationCode, RefreshToken, AccessToken]):
    """The SDK's provider interface over an `AuthServer`'s memory."""

    def __init__(self, server: AuthServer) -> None:
        self.server = server

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        known = self.server.clients.get(client_id)
        if known is None and self.server.metadata_documents and client_id.startswith(("https://", "http://")):
            known = await _client_from_document(client_id, self.server.scopes)
            if known is not None:
                self.server.documents_fetched.append(client_id)
                self.server.clients[client_id] = known  # cached, as servers cache documents
        return known

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        self.server.clients[client_info.client_id] = client_info
        self.server.registrations += 1

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        if params.scopes is None:
            # No `scope` on the request: grant what the client registered for.
            params = params.model_copy(update={"scopes": (client.scope or "").split() or None})
        request_id = secrets.token_urlsafe(16)
        self.server.pending[request_id] = _PendingConsent(client.client_id, params)
        return construct_redirect_uri(f"{self.server.issuer}{CONSENT_PATH}", request=request_id)

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> AuthorizationCode | None:
        return self.server.codes.get(authorization_code)

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: AuthorizationCode
    ) -> OAuthToken:
        # Single use, even when this attempt is refused below.
        if self.server.codes.pop(authorization_code.code, None) is None:
            raise TokenError("invalid_grant", "authorization code was already used")
        requested = _token_request_resource.get()
        if requested != authorization_code.resource:
            raise TokenError(
                "invalid_target",
                f"resource {requested!r} is not the {authorization_code.resource!r} that was authorized",
            )
        return self.server._mint(
            client.client_id,
            [scope for scope in authorization_code.scopes if scope not in self.server.withheld],
            authorization_code.resource,
            authorization_code.subject,
        )

    async def load_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: str
    ) -> RefreshToken | None:
        self.server.refresh_requests += 1
        if self.server.hold_refreshes is not None:
            await self.server.hold_refreshes.wait()
        return self.server.refresh_tokens.get(refresh_token)

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: RefreshToken, scopes: list[str]
    ) -> OAuthToken:
        requested = _token_request_resource.get()
        if requested is not None and requested != refresh_token.resource:
            raise TokenError("invalid_target", f"this refresh token is for {refresh_token.resource!r}")
        rotate = self.server.rotate_refresh_tokens
        if rotate:
            self.server.refresh_tokens.pop(refresh_token.token, None)
        minted = self.server._mint(
            client.client_id,
            scopes,
            refresh_token.resource,
            refresh_token.subject,
            keep_refresh_token=None if rotate else refresh_token.token,
        )
        self.server.refreshes += 1
        return minted

    async def load_access_token(self, token: str) -> AccessToken | None:
        return self.server.access_tokens.get(token)

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        self.server.access_tokens.pop(token.token, None)
        self.server.refresh_tokens.pop(token.token, None)


async def _client_from_document(url: str, scopes: Sequence[str]) -> OAuthClientInformationFull | None:
    """The client a metadata document describes, if it is one and names itself by `url`. Such
    a client may ask for any scope this server offers (a document registers no scope)."""
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.get(url)
    if response.status_code != 200:
        return None
    document = response.json()
    if not isinstance(document, dict) or document.get("client_id") != url:
        return None
    if document.get("token_endpoint_auth_method", "none") != "none":
        return None  # a document cannot carry a secret
    return OAuthClientInformationFull.model_validate({"scope": " ".join(scopes), **document})


def _auth_app(server: AuthServer, *, advertise_pkce: bool) -> Starlette:
    provider = _Provider(server)
    settings = AuthSettings.model_validate(
        {
            "issuer_url": server.issuer,
            "resource_server_url": None,
            "client_registration_options": ClientRegistrationOptions(
                enabled=True, valid_scopes=list(server.scopes), default_scopes=list(server.scopes)
            ),
            "revocation_options": RevocationOptions(enabled=True),
        }
    )
    assert settings.client_registration_options is not None and settings.revocation_options is not None
    metadata = build_metadata(
        settings.issuer_url, None, settings.client_registration_options, settings.revocation_options
    ).model_copy(
        update={
            # The SDK's client authenticator accepts public clients, though its metadata omits them.
            "token_endpoint_auth_methods_supported": [
                "none",
                "client_secret_post",
                "client_secret_basic",
                "private_key_jwt",
            ],
            "grant_types_supported": ["authorization_code", "refresh_token", *sorted(MACHINE_GRANTS)],
            "code_challenge_methods_supported": ["S256"] if advertise_pkce else None,
            "authorization_response_iss_parameter_supported": True,
            "client_id_metadata_document_supported": True if server.metadata_documents else None,
        }
    )
    token_handler = TokenHandler(provider, ClientAuthenticator(provider))

    async def metadata_endpoint(request: Request) -> Response:
        return JSONResponse(metadata.model_dump(mode="json", exclude_none=True))

    async def token_endpoint(request: Request) -> Response:
        if server.fail_token_endpoint_with is not None:
            return JSONResponse(
                {"error": "temporarily_unavailable"},
                status_code=server.fail_token_endpoint_with,
                headers=_NO_STORE,
            )
        await request.body()  # kept on the request: the form below and the SDK's handler read it
        form = await request.form()
        if form.get("grant_type") in MACHINE_GRANTS:
            return await machine_grant(server, request, form)
        request = await _with_client_id_from_basic(request)
        # Starlette caches the parsed form on the request, so the SDK's handler reads the same one.
        resource = (await request.form()).get("resource")
        _token_request_resource.set(resource if isinstance(resource, str) else None)
        response: Response = await token_handler.handle(request)
        return response

    async def consent_page(request: Request) -> Response:
        request_id = request.query_params.get("request", "")
        pending = server.pending.get(request_id)
        if pending is None:
            return HTMLResponse("<!doctype html><p>No such authorization request.</p>", status_code=400)
        client = server.clients[pending.client_id]
        return HTMLResponse(_consent_html(request_id, client, pending.params))

    async def consent_submit(request: Request) -> Response:
        form = await request.form()
        request_id, user = form.get("request"), form.get("user")
        denied = "deny" in form
        if not isinstance(request_id, str) or request_id not in server.pending:
            return HTMLResponse("<!doctype html><p>No such authorization request.</p>", status_code=400)
        if not denied and (not isinstance(user, str) or not user.strip()):
            return HTMLResponse("<!doctype html><p>A user name is required.</p>", status_code=400)
        pending = server.pending.pop(request_id)
        params = pending.params
        if denied:
            target = construct_redirect_uri(
                str(params.redirect_uri), error="access_denied", state=params.state, iss=server.issuer
            )
            return RedirectResponse(target, status_code=302, headers=_NO_STORE)
        assert isinstance(user, str)
        code = AuthorizationCode(
            code=secrets.token_urlsafe(32),
            scopes=params.scopes or [],
            expires_at=time.time() + CODE_TTL_S,
            client_id=pending.client_id,
            code_challenge=params.code_challenge,
            redirect_uri=params.redirect_uri,
            redirect_uri_provided_explicitly=params.redirect_uri_provided_explicitly,
            resource=params.resource,
            subject=user.strip(),
        )
        server.codes[code.code] = code
        target = construct_redirect_uri(
            str(params.redirect_uri), code=code.code, state=params.state, iss=server.issuer
        )
        return RedirectResponse(target, status_code=302, headers=_NO_STORE)

    replaced = {METADATA_PATH, TOKEN_PATH}
    sdk_routes: list[BaseRoute] = [
        route
        for route in create_auth_routes(
            provider,
            settings.issuer_url,
            client_registration_options=settings.client_registration_options,
            revocation_options=settings.revocation_options,
        )
        if route.path not in replaced
    ]
    routes: list[BaseRoute] = [
        Route(METADATA_PATH, metadata_endpoint, methods=["GET"]),
        Route(TOKEN_PATH, token_endpoint, methods=["POST"]),
        Route(CONSENT_PATH, consent_page, methods=["GET"]),
        Route(CONSENT_PATH, consent_submit, methods=["POST"]),
        *sdk_routes,
    ]
    return Starlette(routes=routes)


async def _with_client_id_from_basic(request: Request) -> Request:
    """The request, with `client_id` added to its form from HTTP Basic credentials if it lacks one.

    RFC 6749 §2.3.1 lets a `client_secret_basic` client leave `client_id` out of the body, but
    the SDK's token handler looks for it only there.
    """
    body = await request.body()
    header = request.headers.get("authorization", "")
    if "client_id" in await request.form() or not header.lower().startswith("basic "):
        return request
    try:
        client_id = unquote(base64.b64decode(header[6:], validate=True).decode().split(":", 1)[0])
    except ValueError:  # binascii.Error and UnicodeDecodeError among them
        return request  # the SDK's handler answers malformed credentials
    amended = b"&".join(part for part in (body, urlencode({"client_id": client_id}).encode()) if part)

    async def receive() -> Message:
        return {"type": "http.request", "body": amended, "more_body": False}

    return Request(request.scope, receive)


def _consent_html(request_id: str, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
    e = html.escape
    who = client.client_name or client.client_id
    scopes = " ".join(params.scopes or []) or "(none)"
    return f"""<!doctype html>
<html><head><title>Authorize {e(who)}</title></head>
<body>
<p>{e(who)} asks for <b>{e(scopes)}</b> on <code>{e(params.resource or "(no resource)")}</code>.</p>
<form method="post" action="{CONSENT_PATH}">
<input type="hidden" name="request" value="{e(request_id)}">
<label>User <input type="text" name="user"></label>
<button type="submit" name="approve" value="1">Allow</button>
<button type="submit" name="deny" value="1">Deny</button>
</form>
</body></html>
"""


@asynccontextmanager
async def running_auth_server(
    *,
    access_ttl_s: int = 300,
    advertise_pkce: bool = True,
    scopes: Sequence[str] = DEFAULT_SCOPES,
    rotate_refresh_tokens: bool = True,
    metadata_documents: bool = False,
) -> AsyncIterator[AuthServer]:
    """Run an authorization server on an ephemeral loopback port."""
    with listening_socket() as sock:
        server = AuthServer(
            issuer=base_url_of(sock),
            access_ttl_s=access_ttl_s,
            scopes=tuple(scopes),
            rotate_refresh_tokens=rotate_refresh_tokens,
            metadata_documents=metadata_documents,
        )
        async with serve_asgi_on(sock, _auth_app(server, advertise_pkce=advertise_pkce)):
            yield server


class _ConsentForm(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.hidden: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form" and self.action is None:
            self.action = attributes.get("action", "")
        elif tag == "input" and attributes.get("type") == "hidden":
            self.hidden[attributes.get("name", "")] = attributes.get("value", "")


async def consent(
    client: httpx2.AsyncClient, consent_url: str, user: str, *, approve: bool = True
) -> httpx2.Response:
    """Open the consent page, submit it for `user` (or deny it), return the redirect unfollowed.

    The answer is the 302 to the client's `redirect_uri`, with `code` (or `error`), `state` and
    `iss` in its `Location`.
    """
    page = await client.get(consent_url, follow_redirects=False)
    page.raise_for_status()
    form = _ConsentForm()
    form.feed(page.text)
    assert form.action is not None, page.text
    fields = {**form.hidden, "user": user, "approve" if approve else "deny": "1"}
    return await client.post(urljoin(consent_url, form.action), data=fields, follow_redirects=False)


@dataclass
class ProtectedUpstream:
    url: str  # the /mcp endpoint, which is also the RFC 8707 resource its tokens must name
    resource_metadata_url: str
    # Every Authorization header value received, on any path, in arrival order.
    seen_authorizations: list[str] = field(default_factory=list)


class _RecordAuthorization:
    def __init__(self, app: ASGIApp, seen: list[str]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.extend(
                value.decode("latin-1")
                for name, value in scope["headers"]
                if name.lower() == b"authorization"
            )
        await self.app(scope, receive, send)


class _AudienceVerifier:
    """Accept only live tokens of `auth` minted exactly for `audience`."""

    def __init__(self, auth: AuthServer, audience: str) -> None:
        self.auth = auth
        self.audience = audience

    async def verify_token(self, token: str) -> AccessToken | None:
        return self.auth.live_access_token(token, audience=self.audience)


def protected_server(
    auth: AuthServer, url: str, scopes: Sequence[str], resource: str | None = None
) -> MCPServer[Any]:
    """`resource`: the RFC 9728 resource identifier, when it is not `url` itself (the origin, with
    its metadata at the root well-known path)."""
    url = resource or url
    settings = AuthSettings.model_validate(
        {
            "issuer_url": auth.issuer,
            "resource_server_url": url,
            "required_scopes": list(scopes),
            "validate_token_resource": True,
        }
    )
    server: MCPServer[Any] = MCPServer(
        "protected", token_verifier=_AudienceVerifier(auth, url), auth=settings
    )

    @server.tool(description="The user this request's access token was issued for.", structured_output=False)
    def whoami() -> str:
        token = get_access_token()
        assert token is not None and token.subject is not None
        return token.subject

    @server.tool(description="Echo the text back.", structured_output=False)
    def echo(text: str) -> str:
        return text

    return server


class _StepUp:
    """Per-tool scopes (step-up authorization, MCP 2025-11-25 "Scope Challenge Handling"): a
    `tools/call` of a tool in `required` with a token lacking its scopes is answered 403
    `insufficient_scope`, the challenge naming the scopes the call needs. A filter in front of the
    real server, whose SDK middleware checks one set of scopes for the whole endpoint. An
    `escalating` one challenges for one more of a tool's scopes at a time, as a server that keeps
    asking for more does."""

    def __init__(
        self,
        app: ASGIApp,
        auth: AuthServer,
        required: Mapping[str, Sequence[str]],
        metadata_url: str,
        escalating: bool = False,
    ) -> None:
        self.app, self.auth, self.required, self.metadata_url = app, auth, required, metadata_url
        self.escalating = escalating

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        token = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1").removeprefix("Bearer ")
        access = self.auth.access_tokens.get(token)
        needed = self._needed(body, access.scopes if access is not None else ())
        if needed and access is not None and not set(needed) <= set(access.scopes):
            challenge = (
                f'Bearer error="insufficient_scope", scope="{" ".join(needed)}", '
                f'resource_metadata="{self.metadata_url}"'
            )
            refusal = JSONResponse(
                {"error": "insufficient_scope"}, 403, headers={"WWW-Authenticate": challenge}
            )
            await refusal(scope, receive, send)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _needed(self, body: bytes, granted: Sequence[str]) -> Sequence[str]:
        try:
            message = json.loads(body)
        except ValueError:
            return ()
        if not isinstance(message, dict) or message.get("method") != "tools/call":
            return ()
        params = message.get("params")
        name = params.get("name") if isinstance(params, dict) else None
        needed = self.required.get(name, ()) if isinstance(name, str) else ()
        if self.escalating:  # one scope more than the token has, each time: it never has enough
            missing = [scope for scope in needed if scope not in granted]
            return [*granted, *missing[:1]] if missing else needed
        return needed


class _TokenFirst:
    """The token checked before the revision, as an HTTP server's auth layer comes before its
    MCP handler: a request without a token goes to `app` (whose check answers 401), one with a
    token to `then`."""

    def __init__(self, app: ASGIApp, then: ASGIApp) -> None:
        self.app, self.then = app, then

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tokened = scope["type"] == "http" and any(name == b"authorization" for name, _ in scope["headers"])
        await (self.then if tokened else self.app)(scope, receive, send)


@asynccontextmanager
async def serve_protected_upstream(
    auth: AuthServer,
    *,
    scopes: Sequence[str] = ("read",),
    resource_at_origin: bool = False,
    modern_only: bool = False,
    tool_scopes: Mapping[str, Sequence[str]] | None = None,
    escalating: bool = False,
) -> AsyncIterator[ProtectedUpstream]:
    """Serve an MCP server that `auth` protects, on an ephemeral loopback port. With
    `resource_at_origin` its resource identifier is its origin, its metadata at the root
    well-known path (RFC 9728 section 3.1), as many servers publish it. With `modern_only` it
    speaks 2026-07-28 only to a request with a token (`tests.upstreams.ModernOnly`): one without
    gets the 401 of every request without a token. `tool_scopes` names the scopes some tools'
    calls need beyond `scopes` (`_StepUp`; `escalating`: one more at a time)."""
    with listening_socket() as sock:
        base_url = base_url_of(sock)
        upstream = ProtectedUpstream(
            url=f"{base_url}/mcp",
            resource_metadata_url=f"{base_url}/.well-known/oauth-protected-resource"
            + ("" if resource_at_origin else "/mcp"),
        )
        resource = f"{base_url}/" if resource_at_origin else None
        app: ASGIApp = protected_server(auth, upstream.url, scopes, resource).streamable_http_app()
        if tool_scopes:
            app = _StepUp(app, auth, tool_scopes, upstream.resource_metadata_url, escalating)
        if modern_only:
            app = _TokenFirst(app, ModernOnly(app))
        async with serve_asgi_on(sock, _RecordAuthorization(app, upstream.seen_authorizations)):
            yield upstream


@dataclass
class MigratingUpstream:
    """A protected upstream whose protected resource metadata names `first` until `migrate()`,
    then `second` (SEP-2352, an authorization server migration): from then on only `second`'s
    tokens are taken, and `first`'s are refused with 401 as unknown."""

    url: str
    first: AuthServer
    second: AuthServer
    migrated: bool = False

    def migrate(self) -> None:
        self.migrated = True


class _Migrating:
    """The real protected server of whichever authorization server is current: one SDK app per
    server, on the same URL (its metadata and token checks are the SDK's, fixed at build). The
    lifespan runs both apps' (each SDK app's session manager lives in its lifespan)."""

    def __init__(self, upstream: MigratingUpstream, before: Starlette, after: Starlette) -> None:
        self.upstream, self.before, self.after = upstream, before, after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await (self.after if self.upstream.migrated else self.before)(scope, receive, send)
            return
        await receive()  # lifespan.startup
        async with AsyncExitStack() as stack:
            for app in (self.before, self.after):
                await stack.enter_async_context(app.router.lifespan_context(app))
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})


@asynccontextmanager
async def serve_migrating_upstream(
    first: AuthServer, second: AuthServer, *, scopes: Sequence[str] = ("read",)
) -> AsyncIterator[MigratingUpstream]:
    with listening_socket() as sock:
        upstream = MigratingUpstream(f"{base_url_of(sock)}/mcp", first, second)
        before = protected_server(first, upstream.url, scopes).streamable_http_app()
        after = protected_server(second, upstream.url, scopes).streamable_http_app()
        async with serve_asgi_on(sock, _Migrating(upstream, before, after)):
            yield upstream
