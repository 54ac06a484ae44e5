"""The api package's routes, each wrapped so every refusal leaves as problem+json.

The wrapper is the single place where errors become bodies: a `Problem` from a handler, a
store that cannot answer (503), a method the route does not serve (405), and anything
unexpected (500, logged, no details shown).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import orjson
import yaml
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from api.api_errors import ApiError, api_error_response
from api.credentials import CredentialsApi, Forget, Reauthorise
from api.cursor import CursorCodec
from api.problems import Problem, problem_response
from api.sessions import Authenticate, SessionsApi, Throttled
from store import Store, StoreUnavailable

__all__ = ["CURSOR_SECRET_NAME", "api_routes", "credential_routes", "openapi_document"]

logger = logging.getLogger(__name__)

CURSOR_SECRET_NAME = "cursor-signing-key"
Handler = Callable[[Request], Awaitable[Response]]
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass(frozen=True, slots=True)
class _Surface:
    """How one surface refuses: its error body, and the codes it uses for the common cases."""

    render: Callable[[int, str, str, dict[str, str] | None], Response]
    unavailable: tuple[str, str]
    throttled: tuple[str, str]
    internal: tuple[str, str]
    not_allowed: str


_PROBLEMS = _Surface(
    render=lambda status, code, detail, headers: problem_response(Problem(status, code, detail), headers),
    unavailable=(Problem.unavailable().code, Problem.unavailable().detail),
    throttled=("Auth.TooManyFailures", "Too many failed authentications from this address; retry later."),
    internal=("Internal", "The request failed; the error is logged."),
    not_allowed="MethodNotAllowed",
)
_API_ERRORS = _Surface(
    render=lambda status, code, detail, headers: api_error_response(ApiError(status, code, detail), headers),
    unavailable=("unavailable", "The database is unavailable; try again shortly."),
    throttled=("too_many_failures", "Too many failed authentications from this address; retry later."),
    internal=("internal", "The request failed; the error is logged."),
    not_allowed="method_not_allowed",
)


def _guarded(handler: Handler, surface: _Surface, methods: tuple[str, ...] = ("GET", "HEAD")) -> Handler:
    async def guarded(request: Request) -> Response:
        if request.method not in methods:
            allowed = ", ".join(methods)
            why = f"{request.method} is not allowed here; use {allowed}."
            return surface.render(405, surface.not_allowed, why, {"allow": allowed})
        try:
            return await handler(request)
        except Problem as problem:
            return surface.render(problem.status, problem.code, problem.detail, None)
        except ApiError as refusal:
            return surface.render(refusal.status, refusal.code, refusal.message, None)
        except Throttled as throttled:
            return surface.render(429, *surface.throttled, {"retry-after": str(throttled.retry_after_s)})
        except StoreUnavailable as exc:
            logger.warning("api: %s %s: %s", request.method, request.url.path, exc)
            return surface.render(503, *surface.unavailable, None)
        except Exception:  # the boundary: a bug still answers in this surface's format
            logger.exception("api: %s %s failed", request.method, request.url.path)
            return surface.render(500, *surface.internal, None)

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
    return [
        Route(path, _guarded(handler, _PROBLEMS), methods=_ALL_METHODS) for path, handler in handlers.items()
    ]


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
        Route(base, _guarded(api.list, _API_ERRORS), methods=_ALL_METHODS),
        Route(base + "/{id}", _guarded(api.delete, _API_ERRORS, ("DELETE",)), methods=_ALL_METHODS),
        Route(base + "/{id}/reauth", _guarded(api.reauth, _API_ERRORS, ("POST",)), methods=_ALL_METHODS),
    ]
