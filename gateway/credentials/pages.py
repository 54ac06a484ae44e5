"""The pages a person opens to connect an account: `/connect/{flow}` and `/oauth/callback`
(and the gateway's OAuth client metadata document, which authorization servers fetch).

A connect link first shows whose credential it makes (organisation, and the user, API key or
session the upstream's `identity` says) and asks the person to confirm, a POST to
`/connect/{flow}/confirm` with the page's CSRF token; confirming ties the rest of the flow to
that browser (`confirmation.py`). Then an OAuth flow redirects to the authorization server,
which sends the browser back to the callback, where the gateway exchanges the code itself (the
browser never sees a token); a header flow shows a small form asking for the upstream's
declared headers, whose values are checked with the upstream before they are kept. No page
ever shows a value back.

These are HTML pages for a person, not admin JSON: each answer is a short page with the status
that says what happened (400 bad or replayed, 403 someone else's or another browser, 404
unknown, 410 expired, 422 refused by the upstream). They live beside the broker they drive.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.credentials.broker import CredentialBroker, FlowOwner
from gateway.credentials.confirmation import BrowserBinding
from gateway.credentials.oauth import (
    CLIENT_DOCUMENT_PATH,
    client_document,
    document_url_for,
    redirect_uri_for,
)
from gateway.errors import AuthThrottled, FlowProblem, OAuthError
from gateway.host.auth import key_from_headers
from gateway.principal import Principal
from store import AuthFlow, Sealer, StoreError

logger = logging.getLogger(__name__)

Authenticate = Callable[[Mapping[str, str], str | None], Awaitable[Principal | None]]
_MAX_FORM_BYTES = 64 * 1024
_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"
# The URL is a capability: keep it out of caches, referrers and frames.
_HEADERS = {
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "content-security-policy": _CSP,
}
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-]+(?::[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")


def connect_routes(pages: Callable[[Request], ConnectPages], public_url: str) -> list[BaseRoute]:
    """The connect pages and the OAuth callback, served by the `ConnectPages` the request finds
    (the app's lifespan state), and the client metadata document where `public_url` allows one."""

    async def connect(request: Request) -> Response:
        return await pages(request).connect(request)

    async def confirm(request: Request) -> Response:
        return await pages(request).confirm(request)

    async def callback(request: Request) -> Response:
        return await pages(request).callback(request)

    routes: list[BaseRoute] = [
        Route("/connect/{link}", connect, methods=["GET", "POST"]),
        Route("/connect/{link}/confirm", confirm, methods=["POST"]),
        Route("/oauth/callback", callback, methods=["GET"]),
    ]
    document_url = document_url_for(public_url)
    if document_url is not None:
        document = client_document(document_url, redirect_uri_for(public_url))

        async def client_metadata(request: Request) -> Response:
            return JSONResponse(document, headers={"cache-control": "max-age=3600"})

        routes.append(Route(CLIENT_DOCUMENT_PATH, client_metadata, methods=["GET"]))
    return routes


class ConnectPages:
    def __init__(
        self, broker: CredentialBroker, authenticate: Authenticate, sealer: Sealer, *, secure_cookies: bool
    ) -> None:
        self._broker = broker
        self._authenticate = authenticate
        self._browsers = BrowserBinding(sealer, secure=secure_cookies)
        self._callback_path = urlsplit(broker.redirect_uri).path

    async def connect(self, request: Request) -> Response:
        """GET: whose credential this makes, and a button to confirm. POST: the header form."""
        link = request.path_params["link"]
        try:
            caller = await self._caller(request)
            flow, config = await self._broker.open_flow(link, caller)
            if request.method == "GET":
                return await self._confirmation(request, flow)
            if flow.auth_kind == "oauth":
                return _page(405, "Open this link in a browser.")
            values = await _form_values(request)
            in_browser = self._in_browser(request)
            await self._broker.submit_headers(link, values, caller, in_browser)
            response = _page(
                200, f"Saved. Your {config.name} credentials are connected; you can close this page."
            )
            self._browsers.unbind(response, flow, self._path_of(flow))
            return response
        except FlowProblem as problem:
            if problem.status == 422:
                return _form(self._path_of(flow), config.name, config.auth.header_names, problem.message, 422)
            return _page(problem.status, problem.message)
        except AuthThrottled as exc:
            return _throttled(exc)
        except OAuthError as exc:  # the link is a capability: never in the log
            logger.warning("connect page: %s", exc)
            return _page(502, f"The authorization server cannot be used right now: {exc}")
        except StoreError as exc:
            logger.warning("connect page: %s", exc)
            return _page(503, "The gateway's database is unavailable; try again shortly.")

    async def confirm(self, request: Request) -> Response:
        """The person confirmed whose credential it is: tie the flow to this browser and go on."""
        link = request.path_params["link"]
        try:
            caller = await self._caller(request)
            flow, config = await self._broker.open_flow(link, caller)
            form = await _form_values(request)
            if not self._browsers.csrf_ok(flow, request.cookies, form.get("csrf")):
                return _page(403, "This confirmation cannot be used here: open the connect link again.")
            if flow.auth_kind == "oauth":
                target = await self._broker.authorize_url(flow)
                response: Response = RedirectResponse(target, 303, headers=_HEADERS)
                self._browsers.bind(response, flow, self._callback_path)
            else:
                response = _form(self._path_of(flow), config.name, config.auth.header_names)
                self._browsers.bind(response, flow, self._path_of(flow))
            return response
        except FlowProblem as problem:
            return _page(problem.status, problem.message)
        except AuthThrottled as exc:
            return _throttled(exc)
        except OAuthError as exc:
            logger.warning("connect page: %s", exc)
            return _page(502, f"The authorization server cannot be used right now: {exc}")
        except StoreError as exc:
            logger.warning("connect page: %s", exc)
            return _page(503, "The gateway's database is unavailable; try again shortly.")

    async def callback(self, request: Request) -> Response:
        query = request.query_params
        state = query.get("state")
        if not state:
            return _page(400, "This callback has no state: start again from the tool.")
        bound: list[AuthFlow] = []

        def in_browser(flow: AuthFlow) -> bool:
            bound.append(flow)
            return self._browsers.bound(flow, request.cookies)

        try:
            binding = await self._broker.complete_oauth(
                state, query.get("code"), query.get("iss"), query.get("error"), in_browser
            )
        except FlowProblem as problem:
            return _page(problem.status, problem.message)
        except StoreError as exc:
            logger.warning("oauth callback: %s", exc)
            return _page(503, "The gateway's database is unavailable; try again shortly.")
        done = f"Connected. Your {binding.upstream} account is ready; you can close this page."
        response = _page(200, done)
        for flow in bound:
            self._browsers.unbind(response, flow, self._callback_path)
        return response

    async def _confirmation(self, request: Request, flow: AuthFlow) -> HTMLResponse:
        owner = await self._broker.owner(flow)
        csp, next_step = _CSP, "Next you enter the values it needs."
        if flow.auth_kind == "oauth":
            # The confirmation's answer redirects there: a form's redirect obeys form-action too.
            target = urlsplit(await self._broker.authorize_url(flow))
            origin = f"{target.scheme}://{target.netloc}"
            if _ORIGIN.fullmatch(origin):
                csp = f"{_CSP} {origin}"
            next_step = f"Next you sign in at {target.hostname}."
        token = self._browsers.csrf_token(flow, request.cookies)
        response = _confirmation_page(owner, f"{self._path_of(flow)}/confirm", token, next_step)
        response.headers["content-security-policy"] = csp
        self._browsers.set_csrf(response, flow, token, self._path_of(flow))
        return response

    def _in_browser(self, request: Request) -> Callable[[AuthFlow], bool]:
        return lambda flow: self._browsers.bound(flow, request.cookies)

    def _path_of(self, flow: AuthFlow) -> str:
        """The flow's connect page as a path (the page's own URL, whatever host it was opened by)."""
        return urlsplit(self._broker.flow_url(flow)).path

    async def _caller(self, request: Request) -> Principal | None:
        """Who opened the page, when the request says (a browser usually does not)."""
        if key_from_headers(request.headers) is None:
            return None
        caller = await self._authenticate(request.headers, request.client.host if request.client else None)
        if caller is None:
            raise FlowProblem(401, "The API key sent with this request is unknown or revoked.")
        return caller


def _throttled(exc: AuthThrottled) -> HTMLResponse:
    message = "Too many failed API keys from this address; try again later."
    return _page(429, message, {"retry-after": str(exc.retry_after_s)})


async def _form_values(request: Request) -> dict[str, str]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise FlowProblem(415, "Send the form as application/x-www-form-urlencoded.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise FlowProblem(413, "The form is too large.")
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100))
    except (UnicodeDecodeError, ValueError):
        raise FlowProblem(400, "The form could not be read.") from None


def _page(status: int, message: str, headers: Mapping[str, str] | None = None) -> HTMLResponse:
    body = f"<p>{html.escape(message)}</p>"
    return HTMLResponse(_document("mcpgw", body), status, headers={**_HEADERS, **(headers or {})})


def _confirmation_page(owner: FlowOwner, action: str, token: str, next_step: str) -> HTMLResponse:
    e = html.escape
    upstream = e(owner.upstream)
    whose, person = {
        "user": (f"user <strong>{e(owner.name)}</strong>", e(owner.name)),
        "vk": (f"the API key <strong>{e(owner.name)}…</strong>", f"the holder of API key {e(owner.name)}…"),
        "session": (
            f"one MCP session (of <strong>{e(owner.name)}</strong>)",
            f"the person using that {e(owner.name)} session",
        ),
    }.get(owner.mode, ("this gateway's local user", "the person this gateway runs for"))
    body = (
        f"<h1>Connect {upstream}</h1>"
        f"<p>This connects a <strong>{upstream}</strong> account to the MCP gateway for {whose} of "
        f"organisation <strong>{e(owner.organisation)}</strong>. Their calls to {upstream} through the "
        "gateway will then run as that account.</p>"
        f"<p><strong>If you are not {person}, stop here and close this page</strong>: whoever finishes "
        f"this connects their own {upstream} account, and those calls would run as them.</p>"
        f"<p>{e(next_step)}</p>"
        f'<form method="post" action="{e(action)}"><input type="hidden" name="csrf" value="{e(token)}">'
        f'<button type="submit">Continue: connect it for {person}</button></form>'
    )
    return HTMLResponse(_document(f"Connect {owner.upstream}", body), 200, headers=_HEADERS)


def _form(
    action: str, upstream: str, names: tuple[str, ...], error: str | None = None, status: int = 200
) -> HTMLResponse:
    fields = "".join(
        f'<label>{html.escape(name)} <input type="password" name="{html.escape(name)}" '
        'autocomplete="off" required></label>'
        for name in names
    )
    note = f'<p role="alert">{html.escape(error)}</p>' if error else ""
    body = (
        f"<h1>Connect {html.escape(upstream)}</h1>{note}"
        f"<p>{html.escape(upstream)} needs these values. They are checked with {html.escape(upstream)}, "
        "kept encrypted, and never shown again.</p>"
        f'<form method="post" action="{html.escape(action)}">{fields}'
        '<button type="submit">Save</button></form>'
    )
    return HTMLResponse(_document(f"Connect {upstream}", body), status, headers=_HEADERS)


def _document(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font:16px system-ui;max-width:32em;margin:3em auto}label{display:block;margin:1em 0}"
        "input{display:block;width:100%}</style></head>"
        f"<body>{body}</body></html>"
    )
