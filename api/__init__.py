"""The HTTP surfaces over the store that are not MCP: the session/invocation listing API and
its OpenAPI document. Errors are problem+json (see :mod:`api.problems`). Never imports the
gateway's proxy internals; the app hands it the store and a way to authenticate callers."""

from .routes import CURSOR_SECRET_NAME, api_routes, openapi_document
from .sessions import Caller

__all__ = ["CURSOR_SECRET_NAME", "Caller", "api_routes", "openapi_document"]
