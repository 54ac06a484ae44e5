"""The HTTP surfaces over the store that are not MCP: the session/invocation listing API and
the API key and host sign-in admin routes (problem+json errors), the credential sessions API under `/api/*`
(BifrostError bodies), `/metrics` (plain text) and the OpenAPI document; both error formats,
and the exception tree, are in :mod:`api.errors`. Never imports the gateway's proxy internals;
the app hands it the store, a way to authenticate callers and, for reauth, a way to start a
flow."""

from .credentials import CredentialsApi
from .cursor import CursorCodec
from .errors import ReauthRefused, Throttled
from .grants import GrantsApi, render_grant
from .keys import KeysApi, render_key
from .metrics import metrics_routes
from .routes import (
    CURSOR_SECRET_NAME,
    Provide,
    api_routes,
    credential_routes,
    grant_routes,
    key_routes,
    openapi_document,
)
from .sessions import Caller, SessionsApi

__all__ = [
    "CURSOR_SECRET_NAME",
    "Caller",
    "CredentialsApi",
    "CursorCodec",
    "GrantsApi",
    "KeysApi",
    "Provide",
    "ReauthRefused",
    "SessionsApi",
    "Throttled",
    "api_routes",
    "credential_routes",
    "grant_routes",
    "key_routes",
    "metrics_routes",
    "openapi_document",
    "render_grant",
    "render_key",
]
