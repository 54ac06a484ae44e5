"""The pages a person opens to connect an account: `/connect/{flow}` and `/oauth/callback`
(and the gateway's OAuth client metadata document, which authorization servers fetch).

An OAuth flow's URL redirects to the authorization server; the server sends the browser back
to the callback, where the gateway exchanges the code itself (the browser never sees a token).
A header flow's URL is a small form asking for the upstream's declared headers; values are
checked with the upstream before they are kept, and no page ever shows one back.

These are HTML pages for a person, not admin JSON: each answer is a short page with the status
that says what happened (400 bad or replayed, 403 someone else's, 404 unknown, 410 expired,
422 refused by the upstream). They live beside the broker they drive.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.credentials.broker import CredentialBroker
from gateway.credentials.oauth import (
    CLIENT_DOCUMENT_PATH,
    client_document,
    document_url_for,
    redirect_uri_for,
)
from gateway.errors import AuthThrottled, FlowProblem, OAuthError
from gateway.host.auth import Principal, key_from_headers
from store import StoreError

logger = logging.getLogger(__name__)

Authenticate = Callable[[Mapping[str, str], str | None], Awaitable[Principal | None]]
_MAX_FORM_BYTES = 64 * 1024
# The URL is a capability: keep it out of caches, referrers and frames.
_HEADERS = {
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}


def connect_routes(pages: Callable[[Request], ConnectPages], public_url: str) -> list[BaseRoute]:
    """The connect pages and the OAuth callback, served by the `ConnectPages` the request finds
    (the app's lifespan state), and the client metadata document where `public_url` allows one."""

    async def connect(request: Request) -> Response:
        return await pages(request).connect(request)

    async def callback(request: Request) -> Response:
        return await pages(request).callback(request)

    routes: list[BaseRoute] = [
        Route("/connect/{link}", connect, methods=["GET", "POST"]),
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
    def __init__(self, broker: CredentialBroker, authenticate: Authenticate) -> None:
        self._broker = broker
        self._authenticate = authenticate

    async def connect(self, request: Request) -> Response:
        link = request.path_params["link"]
        try:
            caller = await self._caller(request)
            flow, config = await self._broker.open_flow(link, caller)
            if flow.auth_kind == "oauth":
                if request.method != "GET":
                    return _page(405, "Open this link in a browser.")
                return RedirectResponse(await self._broker.authorize_url(flow), 302, headers=_HEADERS)
            if request.method == "GET":
                return _form(config.name, config.auth.header_names)
            values = await _form_values(request)
            await self._broker.submit_headers(link, values, caller)
            return _page(
                200, f"Saved. Your {config.name} credentials are connected; you can close this page."
            )
        except FlowProblem as problem:
            if problem.status == 422:
                return _form(config.name, config.auth.header_names, problem.message, status=422)
            return _page(problem.status, problem.message)
        except AuthThrottled as exc:
            message = "Too many failed API keys from this address; try again later."
            return _page(429, message, {"retry-after": str(exc.retry_after_s)})
        except OAuthError as exc:  # the link is a capability: never in the log
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
        try:
            binding = await self._broker.complete_oauth(
                state, query.get("code"), query.get("iss"), query.get("error")
            )
        except FlowProblem as problem:
            return _page(problem.status, problem.message)
        except StoreError as exc:
            logger.warning("oauth callback: %s", exc)
            return _page(503, "The gateway's database is unavailable; try again shortly.")
        return _page(200, f"Connected. Your {binding.upstream} account is ready; you can close this page.")

    async def _caller(self, request: Request) -> Principal | None:
        """Who opened the page, when the request says (a browser usually does not)."""
        if key_from_headers(request.headers) is None:
            return None
        caller = await self._authenticate(request.headers, request.client.host if request.client else None)
        if caller is None:
            raise FlowProblem(401, "The API key sent with this request is unknown or revoked.")
        return caller


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


def _form(
    upstream: str, names: tuple[str, ...], error: str | None = None, *, status: int = 200
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
        f'<form method="post">{fields}<button type="submit">Save</button></form>'
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
