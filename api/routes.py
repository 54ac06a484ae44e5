"""The api package's routes, each wrapped by its surface (`api/errors.py`), which answers every
refusal, every method the route does not serve and every failure in that surface's format."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import orjson
import yaml
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from api.credentials import CredentialsApi, Forget, Reauthorise
from api.cursor import CursorCodec
from api.errors import CREDENTIALS, LISTING
from api.sessions import Authenticate, SessionsApi
from store import Store

__all__ = ["CURSOR_SECRET_NAME", "api_routes", "credential_routes", "openapi_document"]

CURSOR_SECRET_NAME = "cursor-signing-key"
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every API route (kept beside this module)."""
    loaded = yaml.safe_load(files("api").joinpath("openapi.yaml").read_text("utf-8"))
    if not isinstance(loaded, dict):
        raise RuntimeError("api/openapi.yaml is not a mapping")
    return loaded


def api_routes(store: Store, cursor_key: bytes, authenticate: Authenticate) -> list[BaseRoute]:
    sessions = SessionsApi(store, CursorCodec(cursor_key), authenticate)
    document = orjson.dumps(openapi_document())

    async def openapi(request: Request) -> Response:
        return Response(document, media_type="application/json")

    base = "/mcp/{organisationId}/sessions"
    handlers = {
        base: sessions.list_sessions,
        base + "/{sessionId}": sessions.get_session,
        base + "/{sessionId}/invocations": sessions.list_invocations,
        "/openapi.json": openapi,
    }
    # Every method reaches the wrapper, so a wrong one is a problem+json 405 like any refusal.
    return [Route(path, LISTING.guarded(handler), methods=_ALL_METHODS) for path, handler in handlers.items()]


def credential_routes(
    store: Store,
    cursor_key: bytes,
    authenticate: Authenticate,
    reauthorise: Reauthorise,
    forget: Forget,
) -> list[BaseRoute]:
    api = CredentialsApi(store, CursorCodec(cursor_key), authenticate, reauthorise, forget)
    base = "/api/mcp/sessions"
    return [
        Route(base, CREDENTIALS.guarded(api.list), methods=_ALL_METHODS),
        Route(base + "/{id}", CREDENTIALS.guarded(api.delete, ("DELETE",)), methods=_ALL_METHODS),
        Route(base + "/{id}/reauth", CREDENTIALS.guarded(api.reauth, ("POST",)), methods=_ALL_METHODS),
    ]
