"""The routes of the gateway's authorization server, declared when the app is built and served
by the `SignInServer` the lifespan opens (`get` finds it in a request's state).

Metadata, token, registration and revocation answer cross-origin requests (browser-based hosts
such as the Inspector call them from a page); the authorize endpoint and the consent page are
navigated to, never fetched, so they have no CORS.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE, RequestBodyLimitMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, request_response
from starlette.types import ASGIApp

from gateway.signin.consent import CONSENT_PATH
from gateway.signin.oidc import CALLBACK_PATH
from gateway.signin.resource import METADATA_PREFIX
from gateway.signin.server import AUTHORIZE_PATH, REGISTER_PATH, REVOKE_PATH, TOKEN_PATH, SignInServer

__all__ = ["signin_routes"]


def signin_routes(get: Callable[[Request], SignInServer]) -> list[Route]:
    async def resource_metadata(request: Request) -> Response:
        return get(request).resource_metadata(request.path_params.get("organisationId"))

    async def server_metadata(request: Request) -> Response:
        return get(request).server_metadata()

    async def authorize(request: Request) -> Response:
        return await get(request).authorize(request)

    async def token(request: Request) -> Response:
        return await get(request).token(request)

    async def register(request: Request) -> Response:
        return await get(request).register(request)

    async def revoke(request: Request) -> Response:
        return await get(request).revoke(request)

    async def consent_page(request: Request) -> Response:
        return await get(request).consents.page(request)

    async def consent_answer(request: Request) -> Response:
        return await get(request).consents.answer(request)

    async def oidc_callback(request: Request) -> Response:
        return await get(request).consents.oidc_callback(request)

    read = ["GET", "OPTIONS"]
    post = ["POST", "OPTIONS"]
    return [
        Route(METADATA_PREFIX + "/mcp", _app(resource_metadata, read), methods=read),
        Route(METADATA_PREFIX + "/mcp/{organisationId}", _app(resource_metadata, read), methods=read),
        Route("/.well-known/oauth-authorization-server", _app(server_metadata, read), methods=read),
        Route("/.well-known/openid-configuration", _app(server_metadata, read), methods=read),
        Route(AUTHORIZE_PATH, _app(authorize), methods=["GET", "POST"]),
        Route(TOKEN_PATH, _app(token, post), methods=post),
        Route(REGISTER_PATH, _app(register, post), methods=post),
        Route(REVOKE_PATH, _app(revoke, post), methods=post),
        Route(CONSENT_PATH, _app(consent_page), methods=["GET"]),
        Route(CONSENT_PATH, _app(consent_answer), methods=["POST"]),
        Route(CALLBACK_PATH, _app(oidc_callback), methods=["GET"]),
    ]


def _app(handler: Callable[[Request], Awaitable[Response]], cors: list[str] | None = None) -> ASGIApp:
    """A handler as an ASGI app with a bounded body, and CORS for any origin if `cors` lists methods
    (these endpoints take no cookies: a cross-origin caller gains nothing a direct one lacks)."""
    app: ASGIApp = RequestBodyLimitMiddleware(request_response(handler), DEFAULT_MAX_REQUEST_BODY_SIZE)
    if cors is None:
        return app
    return CORSMiddleware(
        app, allow_origins=["*"], allow_methods=cors, allow_headers=["mcp-protocol-version"]
    )
