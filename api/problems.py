"""The one error body of the listing API: RFC 9457 `application/problem+json`.

Every refusal is a `Problem` raised by a handler and rendered by `problem_response`, the only
place the body is produced. `title` carries the machine-readable code (`Pagination.InvalidCursor`),
`detail` the sentence for a person; neither ever echoes a secret.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from starlette.responses import Response

__all__ = ["PROBLEM_MEDIA_TYPE", "Problem", "problem_response"]

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TYPE_BASE = "urn:mcpgw:problem:"


@dataclass(frozen=True, slots=True)
class Problem(Exception):
    status: int
    code: str
    detail: str

    @classmethod
    def invalid_cursor(cls) -> Problem:
        return cls(400, "Pagination.InvalidCursor", "The Cursor value is invalid for this query.")

    @classmethod
    def invalid_limit(cls, raw: str, maximum: int) -> Problem:
        shown = raw if len(raw) <= 20 else raw[:20] + "…"
        return cls(
            400,
            "Pagination.InvalidLimit",
            f"Limit must be a whole number from 1 to {maximum}, got {shown!r}.",
        )

    @classmethod
    def session_not_found(cls) -> Problem:
        return cls(404, "Mcp.SessionNotFound", "No such session, or it belongs to another API key.")

    @classmethod
    def not_found(cls) -> Problem:
        return cls(404, "NotFound", "Nothing here.")

    @classmethod
    def unauthorized(cls, missing: bool) -> Problem:
        why = "An API key is required" if missing else "The API key is unknown or revoked"
        return cls(401, "Auth.Unauthorized", f"{why}: send 'Authorization: Bearer mgw_…' or 'x-api-key'.")

    @classmethod
    def unavailable(cls) -> Problem:
        return cls(503, "Store.Unavailable", "The database is unavailable; try again shortly.")


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> Response:
    body = {
        "type": _TYPE_BASE + problem.code,
        "title": problem.code,
        "status": problem.status,
        "detail": problem.detail,
    }
    all_headers = dict(headers or {})
    if problem.status == 401:
        all_headers["www-authenticate"] = 'Bearer realm="mcpgw"'
    return Response(orjson.dumps(body), problem.status, all_headers, media_type=PROBLEM_MEDIA_TYPE)
