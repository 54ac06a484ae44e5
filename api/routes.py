"""The api package's routes, each wrapped so every refusal leaves as problem+json.

The wrapper is the single place where errors become bodies: a `Problem` from a handler, a
store that cannot answer (503), a method the route does not serve (405), and anything
unexpected (500, logged, no details shown).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import Any

import orjson
import yaml
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from api.cursor import CursorCodec
from api.problems import Problem, problem_response
from api.sessions import Authenticate, SessionsApi
from store import Store, StoreUnavailable

__all__ = ["CURSOR_SECRET_NAME", "api_routes", "openapi_document"]

logger = logging.getLogger(__name__)

CURSOR_SECRET_NAME = "cursor-signing-key"
Handler = Callable[[Request], Awaitable[Response]]
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _guarded(handler: Handler) -> Handler:
    async def guarded(request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            refusal = Problem(405, "MethodNotAllowed", f"{request.method} is not allowed here; use GET.")
            return problem_response(refusal, {"allow": "GET, HEAD"})
        try:
            return await handler(request)
        except Problem as problem:
            return problem_response(problem)
        except StoreUnavailable as exc:
            logger.warning("api: %s %s: %s", request.method, request.url.path, exc)
            return problem_response(Problem.unavailable())
        except Exception:  # the boundary: a bug still answers in this surface's format
            logger.exception("api: %s %s failed", request.method, request.url.path)
            return problem_response(Problem(500, "Internal", "The request failed; the error is logged."))

    return guarded


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
    return [Route(path, _guarded(handler), methods=_ALL_METHODS) for path, handler in handlers.items()]
