"""The one error body of the `/api/*` surface: the spec's `BifrostError`.

    {"is_bifrost_error": false, "status_code": 404,
     "error": {"type": "not_found", "code": "not_found", "message": "No such MCP session."}}

Handlers raise `ApiError`; `api_error_response` is the only place the body is made.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from starlette.responses import Response

__all__ = ["ApiError", "api_error_response"]


@dataclass(frozen=True, slots=True)
class ApiError(Exception):
    status: int
    code: str
    message: str

    @classmethod
    def unauthorized(cls) -> ApiError:
        return cls(401, "unauthorized", "An admin API key is required: send 'Authorization: Bearer mgw_…'.")


def api_error_response(error: ApiError, headers: dict[str, str] | None = None) -> Response:
    body = {
        "is_bifrost_error": False,
        "status_code": error.status,
        "error": {"type": error.code, "code": error.code, "message": error.message},
    }
    all_headers = dict(headers or {})
    if error.status == 401:
        all_headers["www-authenticate"] = 'Bearer realm="mcpgw-admin"'
    return Response(orjson.dumps(body), error.status, all_headers, media_type="application/json")
