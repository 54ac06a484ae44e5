"""The HTTP surfaces over the store that are not MCP: the session/invocation listing API
(problem+json errors, see :mod:`api.problems`), the credential sessions API under `/api/*`
(BifrostError bodies, see :mod:`api.api_errors`) and the OpenAPI document. Never imports the
gateway's proxy internals; the app hands it the store, a way to authenticate callers and, for
reauth, a way to start a flow."""

from .credentials import ReauthRefused
from .routes import CURSOR_SECRET_NAME, api_routes, credential_routes, openapi_document
from .sessions import Caller, Throttled

__all__ = [
    "CURSOR_SECRET_NAME",
    "Caller",
    "ReauthRefused",
    "Throttled",
    "api_routes",
    "credential_routes",
    "openapi_document",
]
