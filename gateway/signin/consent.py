"""The consent page: where the person a host sends to the gateway says who they are and whether
the host may act as them.

An authorization request the SDK handler has validated is parked here (`Consents.start`) under a
random id for `host_sign_in.consent_ttl_s`, in the store (`SignInStore.park_authorization`), so
that any process can show and finish it, at most `pending_per_address` at once from one client
address; the browser is sent to `/signin/consent?request=<id>`. The page names the client (from
its metadata), where it sends the person back, and what it gets; it offers each sign-in method
the config enables (`methods`): a user-bound API key, POSTed in the form body and never in a
URL, and a button per OpenID Connect provider, which sends the browser to the provider
(`oidc.py`) and, on its callback (`oidc_callback`), ends in `complete_sign_in` as the key does.
Every answer (approve with a key, sign in with a provider, deny) is a POST of a form with a CSRF
token that must equal the one in a cookie set with the page (double submit, SameSite=Strict): a
provider's button is a form too, because a plain link would let whoever started the request send
someone straight to their provider, where a live session signs them in without their seeing what
they approve. The page has no script and no inline style, so it works without JavaScript under a
`default-src 'none'` policy.

The provider's callback is shared with the admin console (`api/console`), which signs admins in
through the same providers: a sign-in it began (`begin_console_sign_in`) carries `CONSOLE_SIGN_IN`
in its sealed state where a consent sign-in carries its pending request, and its callback ends in
the console's `console` hook rather than here.

The answer goes back to the client's redirect URI, which its client registered and the SDK
handler checked, with `iss` (RFC 9207) and the host's `state`: a code (`complete_sign_in`), or
`access_denied`. Nothing is redirected anywhere else.
"""

from __future__ import annotations

import hmac
import html
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from mcp.server.auth.provider import AuthorizationParams, construct_redirect_uri
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gateway.config import HostSignInConfig
from gateway.errors import AuthThrottled, OidcError, OidcRefused, SignInRefused
from gateway.host._throttle import bucket_of
from gateway.signin._fields import read_form
from gateway.signin.clients import HostClient
from gateway.signin.oidc import CALLBACK_PATH, STATE_COOKIE, Begun, OidcSignIn, SignedInUser
from gateway.signin.resource import SCOPE, ProtectedResource
from gateway.signin.tokens import CODE_PREFIX, new_secret
from store import PendingSignIn, SignInCode, SignInStore, utc_now

if TYPE_CHECKING:
    from gateway.principal import Principal

__all__ = [
    "CONSENT_PATH",
    "CONSOLE_SIGN_IN",
    "Consents",
    "ConsoleSignedIn",
    "PendingAuthorization",
    "SignInMethod",
]

logger = logging.getLogger(__name__)

CONSENT_PATH = "/signin/consent"
_COOKIE_PREFIX = "mcpgw_consent_"
_MAX_KEY_CHARS = 200
_HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}

# Checks an API key typed on the page (HostAuth.authenticate, with its failure throttling).
KeyCheck = Callable[[Mapping[str, str], str | None], Awaitable["Principal | None"]]
# What a person an OpenID Connect provider vouched for signs in as (oidc.identity_key's principal).
Identify = Callable[[SignedInUser], Awaitable["Principal"]]
_OIDC_DECISION = "oidc:"
CONSOLE_SIGN_IN = "console"
"""What a provider sign-in started by the admin console is for, in place of a pending
authorization's id (which `secrets.token_urlsafe` never makes): the callback is shared."""
# The admin console's answer to a person a provider vouched for (api/console: `provider_signed_in`).
ConsoleSignedIn = Callable[["Principal", str], Response]


@dataclass(frozen=True, slots=True)
class PendingAuthorization:
    """An authorization request waiting for the person's answer."""

    id: str
    client: HostClient
    params: AuthorizationParams
    resource: str  # the MCP URL the tokens will be bound to
    csrf: str

    def kept(self, address: str | None, expires_at: datetime) -> PendingSignIn:
        """As the store keeps it (the client without its secret's hash, which finishing needs not)."""
        request = {
            "client": self.client.model_dump(mode="json", exclude_none=True, exclude={"secret_hash"}),
            "params": self.params.model_dump(mode="json"),
            "resource": self.resource,
            "csrf": self.csrf,
        }
        return PendingSignIn(self.id, bucket_of(address), self.client.client_id, request, expires_at)

    @classmethod
    def of(cls, kept: PendingSignIn) -> PendingAuthorization | None:
        """The request the store kept; None if it no longer reads as one (a client record of an
        older gateway: the person starts again)."""
        try:
            request = kept.request
            return cls(
                id=kept.id,
                client=HostClient.model_validate(request["client"]),
                params=AuthorizationParams.model_validate(request["params"]),
                resource=str(request["resource"]),
                csrf=str(request["csrf"]),
            )
        except (KeyError, TypeError, ValidationError):
            return None


@dataclass(frozen=True, slots=True)
class SignInMethod:
    """One way to say who you are, as the consent page offers it: `api_key` is the form on the
    page itself; `oidc` is a button (`decision`) that sends the browser to the provider for the
    pending request, which comes back to `Consents.oidc_callback`."""

    kind: str
    label: str
    decision: str | None = None  # the form's decision value for a method that leaves the page


class Consents:
    def __init__(
        self,
        store: SignInStore,
        resource: ProtectedResource,
        config: HostSignInConfig,
        check_key: KeyCheck,
        oidc: tuple[OidcSignIn, Identify] | None = None,
    ) -> None:
        self._store = store
        self._resource = resource
        self._config = config
        self._check_key = check_key
        self._oidc = oidc
        self._secure_cookie = resource.public_url.startswith("https://")
        self.console: ConsoleSignedIn | None = None  # set by the app once the console exists

    # -- the provider's side -------------------------------------------------------------------

    async def start(
        self, client: HostClient, params: AuthorizationParams, resource: str, address: str | None
    ) -> str | None:
        """Park a validated authorization request from `address`; the URL of its consent page,
        or None when that address has `pending_per_address` requests waiting already."""
        pending = PendingAuthorization(
            id=secrets.token_urlsafe(24),
            client=client,
            params=params,
            resource=resource,
            csrf=secrets.token_urlsafe(24),
        )
        now = utc_now()
        expires_at = now + timedelta(seconds=self._config.consent_ttl_s)
        kept = pending.kept(address, expires_at)
        if not await self._store.park_authorization(kept, self._config.pending_per_address, now):
            return None
        return f"{self._resource.public_url}{CONSENT_PATH}?request={pending.id}"

    async def pending(self, request_id: str) -> PendingAuthorization | None:
        """The pending request, unless unknown, answered or expired (an OIDC flow looks it up by id)."""
        if not request_id or len(request_id) > 64:
            return None
        kept = await self._store.pending_authorization(request_id, utc_now())
        return None if kept is None else PendingAuthorization.of(kept)

    async def complete_sign_in(self, pending: PendingAuthorization, principal: Principal) -> str | None:
        """The person is known (`principal`: what they sign in as): issue a single-use code for
        the pending request and return where the browser goes next (the client's redirect URI
        with code, state and iss), or None if the request was answered meanwhile (twice at once:
        only one answer issues a code). Every sign-in method ends here."""
        if principal.api_key_id is None:
            raise ValueError("a sign-in needs a principal with an API key")
        if not await self._store.end_authorization(pending.id):
            return None
        code = new_secret(CODE_PREFIX)
        now = utc_now()
        await self._store.issue_code(
            code,
            SignInCode(
                client_id=pending.client.client_id,
                client_row_id=pending.client.row_id,
                client_name=pending.client.client_name,
                redirect_uri=str(pending.params.redirect_uri),
                code_challenge=pending.params.code_challenge,
                resource=pending.resource,
                scope=SCOPE,
                organisation_id=principal.organisation_id,
                api_key_id=principal.api_key_id,
                expires_at=now + timedelta(seconds=self._config.code_ttl_s),
                redirect_uri_explicit=pending.params.redirect_uri_provided_explicitly,
            ),
            now,
        )
        return self._back(pending, code=code)

    async def deny(self, pending: PendingAuthorization) -> str | None:
        if not await self._store.end_authorization(pending.id):
            return None
        return self._back(
            pending, error="access_denied", error_description="the person did not allow this sign-in"
        )

    def _back(self, pending: PendingAuthorization, **answer: str) -> str:
        return construct_redirect_uri(
            str(pending.params.redirect_uri), **answer, state=pending.params.state, iss=self._resource.issuer
        )

    def methods(self, pending: PendingAuthorization) -> list[SignInMethod]:
        """The sign-in methods the page offers, from the config."""
        methods: list[SignInMethod] = []
        if self._oidc is not None:
            for name, provider in self._oidc[0].providers.items():
                methods.append(SignInMethod("oidc", f"Sign in with {provider.label}", _OIDC_DECISION + name))
        if self._config.api_keys:
            methods.append(SignInMethod("api_key", "Sign in with an API key"))
        return methods

    # -- the page --------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        pending = await self.pending(request.query_params.get("request", ""))
        if pending is None:
            return _expired()
        response = self._render(pending, None, 200)
        response.set_cookie(
            _COOKIE_PREFIX + pending.id,
            pending.csrf,
            max_age=int(self._config.consent_ttl_s),
            path=CONSENT_PATH,
            secure=self._secure_cookie,
            httponly=True,
            samesite="strict",
        )
        return response

    async def answer(self, request: Request) -> Response:
        try:
            form = await read_form(request)
        except SignInRefused:
            return _expired()
        request_id = form.get("request")
        pending = await self.pending(request_id) if isinstance(request_id, str) else None
        if pending is None:
            return _expired()
        posted = form.get("csrf")
        cookie = request.cookies.get(_COOKIE_PREFIX + pending.id, "")
        if not (
            isinstance(posted, str)
            # As bytes: compare_digest refuses str that is not ASCII, which anyone can post.
            and hmac.compare_digest(posted.encode(), pending.csrf.encode())
            and hmac.compare_digest(cookie.encode(), pending.csrf.encode())
        ):
            return _page("This form cannot be used", "<p>Open the sign-in page again from your app.</p>", 403)
        decision = form.get("decision")
        if decision == "deny":
            return _redirect_or_expired(await self.deny(pending))
        if isinstance(decision, str) and decision.startswith(_OIDC_DECISION):
            return await self._to_provider(pending, decision.removeprefix(_OIDC_DECISION))
        if not self._config.api_keys:
            return self._render(pending, "Signing in with an API key is turned off.", 400)
        key = form.get("api_key")
        if not isinstance(key, str) or not key.strip() or len(key) > _MAX_KEY_CHARS:
            return self._render(pending, "Enter your API key.", 400)
        client = request.client.host if request.client else None
        try:
            principal = await self._check_key({"x-api-key": key.strip()}, client)
        except AuthThrottled as exc:
            response = self._render(pending, "Too many failed attempts from here; try again later.", 429)
            response.headers["retry-after"] = str(exc.retry_after_s)
            return response
        problem = self._key_problem(pending, principal)
        if problem is not None:
            return self._render(pending, problem, 400)
        assert principal is not None
        logger.info(
            "sign-in: key %s approved client %s for %s",
            principal.api_key_id,
            pending.client.row_id,
            pending.resource,
        )
        return _redirect_or_expired(await self.complete_sign_in(pending, principal))

    async def _to_provider(self, pending: PendingAuthorization, provider: str) -> Response:
        if self._oidc is None or provider not in self._oidc[0].providers:
            return self._render(pending, "That sign-in method is not offered here.", 400)
        try:
            begun = await self._oidc[0].begin(provider, pending.id)
        except OidcError as exc:
            logger.warning("sign-in: OIDC provider %r cannot be used: %s", provider, exc)
            return self._render(pending, f"Signing in that way is not possible now: {exc.message}", 502)
        response = _redirect(begun.url)
        # SameSite=Lax: the provider's redirect back is a top-level GET from its site, which a
        # Strict cookie would not come with.
        response.set_cookie(
            STATE_COOKIE,
            begun.stored_state,
            max_age=begun.max_age_s,
            path=CALLBACK_PATH,
            secure=self._secure_cookie,
            httponly=True,
            samesite="lax",
        )
        return response

    async def oidc_callback(self, request: Request) -> Response:
        """Where a provider sends the browser back: the person it vouches for signs in as what
        `identify` makes of them, for the pending request the sign-in was started for."""
        if self._oidc is None:
            return _page("Not found", "<p>No OpenID Connect provider is configured.</p>", 404)
        sign_in, identify = self._oidc
        return await self._from_provider(request, sign_in, identify)

    async def begin_console_sign_in(self, provider: str) -> Begun:
        """Start a provider sign-in for the admin console (its callback is `oidc_callback`);
        `OidcError` when the provider cannot be used now."""
        if self._oidc is None or provider not in self._oidc[0].providers:
            raise OidcRefused(provider, "unknown_provider", "that sign-in method is not offered here")
        return await self._oidc[0].begin(provider, CONSOLE_SIGN_IN)

    async def _from_provider(self, request: Request, sign_in: OidcSignIn, identify: Identify) -> Response:
        try:
            user = await sign_in.finish(dict(request.query_params), request.cookies.get(STATE_COOKIE))
        except OidcRefused as exc:
            logger.info("sign-in: OIDC provider %r refused a sign-in (%s)", exc.provider, exc.reason)
            return _page("You are not signed in", f"<p>{html.escape(exc.message)}</p>", 403)
        except OidcError as exc:
            logger.warning("sign-in: OIDC provider %r cannot be used: %s", exc.provider, exc)
            return _page("Signing in is not possible now", f"<p>{html.escape(exc.message)}</p>", 502)
        if user.pending_authorization_id == CONSOLE_SIGN_IN and self.console is not None:
            # Sealed in the state by `begin_console_sign_in`: only the console's own sign-ins.
            answer = self.console(await identify(user), user.email or user.user_id)
            answer.delete_cookie(STATE_COOKIE, path=CALLBACK_PATH)
            return answer
        pending = await self.pending(user.pending_authorization_id)
        if pending is None:
            return _expired()
        principal = await identify(user)
        organisation = self._resource.organisation_of(pending.resource)
        if organisation is not None and organisation != principal.organisation_id:
            who = html.escape(user.email or user.user_id)
            return _page(
                "You are not signed in", f"<p>{who} is not a member of this MCP URL's organisation.</p>", 403
            )
        logger.info(
            "sign-in: %s of organisation %s (OIDC provider %r) approved client %s for %s",
            principal.user_id,
            principal.organisation_id,
            user.provider,
            pending.client.row_id,
            pending.resource,
        )
        back = await self.complete_sign_in(pending, principal)
        if back is None:
            return _expired()
        response = _redirect(back)
        response.delete_cookie(STATE_COOKIE, path=CALLBACK_PATH)
        return response

    def _key_problem(self, pending: PendingAuthorization, principal: Principal | None) -> str | None:
        if principal is None or principal.grant_id is not None:
            return "That API key is not valid."
        if principal.user_id is None:
            return "That API key is not bound to a user: sign in with your own (mcpgw keys create --user)."
        organisation = self._resource.organisation_of(pending.resource)
        if organisation is not None and organisation != principal.organisation_id:
            return "That API key belongs to another organisation than this MCP URL."
        return None

    def _render(self, pending: PendingAuthorization, problem: str | None, status: int) -> HTMLResponse:
        client = pending.client
        redirect = urlsplit(str(pending.params.redirect_uri))
        back_to = redirect.hostname or f"{redirect.scheme}: (an app on this device)"
        source = {
            "document": f"described by {client.client_id}",
            "config": "registered by your administrator",
            "registered": "registered itself with this gateway",
        }.get(client.origin, "")
        e = html.escape
        methods = self.methods(pending)
        body = [
            f"<p><strong>{e(client.display_name)}</strong> ({e(source)}) wants to use the MCP gateway at "
            f"<code>{e(pending.resource)}</code> as you.</p>",
            "<p>It will be able to list and call the tools, resources and prompts your API key can reach, "
            "as you (your organisation, your tool filters, your connected accounts), until you or an "
            "administrator revoke it.</p>",
            f"<p>After you answer, you go back to <strong>{e(back_to)}</strong>.</p>",
        ]
        if problem is not None:
            body.append(f'<p role="alert"><strong>{e(problem)}</strong></p>')
        hidden = (
            f'<input type="hidden" name="request" value="{e(pending.id)}">'
            f'<input type="hidden" name="csrf" value="{e(pending.csrf)}">'
        )
        for method in methods:
            if method.kind == "api_key":
                body.append(
                    f'<form method="post" action="{CONSENT_PATH}">{hidden}'
                    '<p><label for="api_key">Your API key (one bound to you: <code>mcpgw keys create '
                    '--user</code>)</label><br><input type="password" id="api_key" name="api_key" '
                    'autocomplete="off" required></p>'
                    '<p><button type="submit" name="decision" value="approve">Allow</button></p></form>'
                )
            elif method.decision is not None:
                body.append(
                    f'<form method="post" action="{CONSENT_PATH}">{hidden}<p><button type="submit" '
                    f'name="decision" value="{e(method.decision)}">{e(method.label)}</button></p></form>'
                )
        if not methods:
            body.append("<p>No sign-in method is enabled on this gateway; ask your administrator.</p>")
        body.append(
            f'<form method="post" action="{CONSENT_PATH}">{hidden}'
            '<p><button type="submit" name="decision" value="deny">Deny</button></p></form>'
        )
        return _page(f"Sign in to mcpgw: {client.display_name}", "".join(body), status)


def _page(title: str, body: str, status: int) -> HTMLResponse:
    text = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(text, status, headers=_HEADERS)


def _expired() -> HTMLResponse:
    text = "<p>This sign-in request is unknown or has expired. Start again from your app.</p>"
    return _page("Sign-in expired", text, 400)


def _redirect_or_expired(url: str | None) -> Response:
    return _expired() if url is None else _redirect(url)


def _redirect(url: str) -> RedirectResponse:
    # 303: the browser follows a POST's answer with a GET.
    return RedirectResponse(url, 303, headers={"cache-control": "no-store", "referrer-policy": "no-referrer"})
