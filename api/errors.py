"""The api package's exceptions, and the one place each of its two surfaces turns them into answers.

    ApiError            anything the api raises to refuse a request
    ├── Refused         a refusal its handler words: status, the surface's code, one sentence
    ├── Throttled       the caller's address failed to authenticate too often (429, Retry-After);
    │                   raised by the `Authenticate` the app hands in
    ├── InvalidCursor   a cursor this gateway did not mint for this query; the handler that read
    │                   it answers a `Refused` 400 in its surface's words
    ├── ReauthRefused   the binding's upstream takes no per-user credentials any more; raised by
    │                   the `Reauthorise` the app hands in, answered 409 by the credential handler
    └── ProviderUnavailable  an OpenID Connect provider cannot be used now; raised by the console's
                        `ProviderSignIn.begin` the app hands in, said on the console's sign-in page

Two surfaces, two bodies:

- the listing surface (`/mcp/{organisationId}/sessions…`, `/openapi.json`): RFC 9457
  `application/problem+json`; `title` carries the code (`Pagination.InvalidCursor`), `detail`
  the sentence: ``{"type": "urn:mcpgw:problem:<code>", "title": <code>, "status": 400, "detail": …}``
- the credential surface (`/api/*`): the spec's BifrostError, ``{"is_bifrost_error": false,
  "status_code": 404, "error": {"type": <code>, "code": <code>, "message": …}}``.

`Surface.guarded` wraps every route of a surface and `Surface.respond` is the whole mapping
from exception to response: a `Refused` as it says, `Throttled` 429, a store that cannot answer
(`store.StoreUnavailable`) 503, a method the route does not serve 405, anything else 500 (logged,
no details shown). A 401 names the surface's realm in `WWW-Authenticate`. No body ever echoes
a secret.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from store import StoreUnavailable

__all__ = [
    "CREDENTIALS",
    "LISTING",
    "PROBLEM_MEDIA_TYPE",
    "ApiError",
    "InvalidCursor",
    "ProviderUnavailable",
    "ReauthRefused",
    "Refused",
    "Surface",
    "Throttled",
]

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
Handler = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    """Root of every exception the api package raises."""


@dataclass(frozen=True, slots=True)
class Refused(ApiError):
    """A refusal in its surface's words: `code` is machine-readable, `detail` for a person."""

    status: int
    code: str
    detail: str


class Throttled(ApiError):
    """The caller's address has failed to authenticate too often: 429 with ``Retry-After``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"retry after {retry_after_s}s")
        self.retry_after_s = retry_after_s


class InvalidCursor(ApiError):
    """Not a cursor this gateway minted for this query."""


class ReauthRefused(ApiError):
    """The binding's upstream no longer takes per-user credentials (a pending flow, unlike a
    credential, is not marked orphaned when that changes): answered 409."""


class ProviderUnavailable(ApiError):
    """An OpenID Connect provider cannot be used now (its discovery or keys failed)."""


def _problem(status: int, code: str, detail: str) -> dict[str, Any]:
    return {"type": f"urn:mcpgw:problem:{code}", "title": code, "status": status, "detail": detail}


def _bifrost_error(status: int, code: str, detail: str) -> dict[str, Any]:
    return {
        "is_bifrost_error": False,
        "status_code": status,
        "error": {"type": code, "code": code, "message": detail},
    }


@dataclass(frozen=True, slots=True)
class Surface:
    """How one surface refuses: its body, and its words (code, sentence) for the refusals that
    do not come worded from a handler."""

    body: Callable[[int, str, str], dict[str, Any]]
    media_type: str
    realm: str
    throttled: tuple[str, str]
    unavailable: tuple[str, str]
    internal: tuple[str, str]
    not_allowed: str

    def respond(self, exc: Exception) -> Response:
        """This surface's answer to ``exc``, raised while serving one of its routes."""
        match exc:
            case Refused(status=status, code=code, detail=detail):
                return self._render(status, code, detail)
            case Throttled(retry_after_s=retry_after_s):
                return self._render(429, *self.throttled, {"retry-after": str(retry_after_s)})
            case StoreUnavailable():
                return self._render(503, *self.unavailable)
            case _:
                return self._render(500, *self.internal)

    def guarded(self, handler: Handler, methods: tuple[str, ...] = ("GET", "HEAD")) -> Handler:
        """``handler`` for ``methods``, every other method refused, every exception answered."""
        allowed = ", ".join(methods)

        async def guarded(request: Request) -> Response:
            if request.method not in methods:
                why = f"{request.method} is not allowed here; use {allowed}."
                return self._render(405, self.not_allowed, why, {"allow": allowed})
            try:
                return await handler(request)
            except (Refused, Throttled) as exc:
                return self.respond(exc)
            except StoreUnavailable as exc:
                logger.warning("api: %s %s: %s", request.method, request.url.path, exc)
                return self.respond(exc)
            except Exception as exc:  # the boundary: a bug still answers in this surface's format
                logger.exception("api: %s %s failed", request.method, request.url.path)
                return self.respond(exc)

        return guarded

    def _render(
        self, status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> Response:
        all_headers = dict(headers or {})
        if status == 401:
            all_headers["www-authenticate"] = f'Bearer realm="{self.realm}"'
        body = orjson.dumps(self.body(status, code, detail))
        return Response(body, status, all_headers, media_type=self.media_type)


LISTING = Surface(
    body=_problem,
    media_type=PROBLEM_MEDIA_TYPE,
    realm="mcpgw",
    throttled=("Auth.TooManyFailures", "Too many failed authentications from this address; retry later."),
    unavailable=("Store.Unavailable", "The database is unavailable; try again shortly."),
    internal=("Internal", "The request failed; the error is logged."),
    not_allowed="MethodNotAllowed",
)
"""`/mcp/{organisationId}/sessions…` and `/openapi.json`: problem+json."""

CREDENTIALS = Surface(
    body=_bifrost_error,
    media_type="application/json",
    realm="mcpgw-admin",
    throttled=("too_many_failures", "Too many failed authentications from this address; retry later."),
    unavailable=("unavailable", "The database is unavailable; try again shortly."),
    internal=("internal", "The request failed; the error is logged."),
    not_allowed="method_not_allowed",
)
"""`/api/*`: the spec's BifrostError."""
