"""The api package's routes, each wrapped by its surface (`api/errors.py`), which answers every
refusal, every method the route does not serve and every failure in that surface's format."""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from typing import Any, TypeVar

import orjson
import yaml
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from api.credentials import CredentialsApi
from api.errors import CREDENTIALS, LISTING
from api.grants import GrantsApi
from api.keys import KeysApi
from api.sessions import SessionsApi

__all__ = [
    "CURSOR_SECRET_NAME",
    "Provide",
    "api_routes",
    "credential_routes",
    "key_routes",
    "openapi_document",
]

T = TypeVar("T")
Provide = Callable[[Request], T]
"""How a route finds what serves it: from the request (the app's lifespan state), so every route
is declared when the app is built, before anything it needs is open."""

CURSOR_SECRET_NAME = "cursor-signing-key"
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every API route (kept beside this module)."""
    loaded = yaml.safe_load(files("api").joinpath("openapi.yaml").read_text("utf-8"))
    if not isinstance(loaded, dict):
        raise RuntimeError("api/openapi.yaml is not a mapping")
    return loaded


def api_routes(sessions: Provide[SessionsApi]) -> list[BaseRoute]:
    document = orjson.dumps(openapi_document())

    async def openapi(request: Request) -> Response:
        return Response(document, media_type="application/json")

    async def list_sessions(request: Request) -> Response:
        return await sessions(request).list_sessions(request)

    async def get_session(request: Request) -> Response:
        return await sessions(request).get_session(request)

    async def list_invocations(request: Request) -> Response:
        return await sessions(request).list_invocations(request)

    base = "/mcp/{organisationId}/sessions"
    handlers = {
        base: list_sessions,
        base + "/{sessionId}": get_session,
        base + "/{sessionId}/invocations": list_invocations,
        "/openapi.json": openapi,
    }
    # Every method reaches the wrapper, so a wrong one is a problem+json 405 like any refusal.
    return [Route(path, LISTING.guarded(handler), methods=_ALL_METHODS) for path, handler in handlers.items()]


def key_routes(keys: Provide[KeysApi]) -> list[BaseRoute]:
    async def listing(request: Request) -> Response:
        return await keys(request).list(request)

    async def revoke(request: Request) -> Response:
        return await keys(request).revoke(request)

    base = "/mcp/{organisationId}/keys"
    return [
        Route(base, LISTING.guarded(listing), methods=_ALL_METHODS),
        Route(base + "/{apiKeyId}/revoke", LISTING.guarded(revoke, ("POST",)), methods=_ALL_METHODS),
    ]


def grant_routes(grants: Provide[GrantsApi]) -> list[BaseRoute]:
    async def listing(request: Request) -> Response:
        return await grants(request).list(request)

    async def revoke(request: Request) -> Response:
        return await grants(request).revoke(request)

    base = "/mcp/{organisationId}/grants"
    return [
        Route(base, LISTING.guarded(listing), methods=_ALL_METHODS),
        Route(base + "/{grantId}/revoke", LISTING.guarded(revoke, ("POST",)), methods=_ALL_METHODS),
    ]


def credential_routes(credentials: Provide[CredentialsApi]) -> list[BaseRoute]:
    async def listing(request: Request) -> Response:
        return await credentials(request).list(request)

    async def delete(request: Request) -> Response:
        return await credentials(request).delete(request)

    async def reauth(request: Request) -> Response:
        return await credentials(request).reauth(request)

    base = "/api/mcp/sessions"
    return [
        Route(base, CREDENTIALS.guarded(listing), methods=_ALL_METHODS),
        Route(base + "/{id}", CREDENTIALS.guarded(delete, ("DELETE",)), methods=_ALL_METHODS),
        Route(base + "/{id}/reauth", CREDENTIALS.guarded(reauth, ("POST",)), methods=_ALL_METHODS),
    ]
