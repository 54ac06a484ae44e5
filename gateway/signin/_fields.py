"""How much of each field a client sends the authorization server is read, before anything is
parsed further or kept (issue 23): every value here is far above what a real host sends and far
below what would let a stranger make the gateway hold much.

`state` is opaque to the server and echoed back to the client (RFC 6749 section 4.1.1); the
hosts known send 32 to 100 characters, so 1 KiB is plenty. URIs get 2,000 characters (what
browsers and servers agree on in practice); a PKCE challenge is 43 (RFC 7636 section 4.2), so
128 leaves room only for a clear refusal of the wrong length further on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from gateway.errors import SignInRefused

__all__ = [
    "AUTHORIZE_LIMITS",
    "MAX_FORM_FIELDS",
    "MAX_STATE",
    "MAX_URI",
    "TOKEN_LIMITS",
    "oversized",
    "read_form",
]

MAX_STATE = 1024
MAX_URI = 2000
MAX_FORM_FIELDS = 20  # an OAuth request has at most ten or so; a form with more is no request of ours
_MAX_FORM_FIELD_BYTES = 64 * 1024  # starlette's own limit per field is 1 MiB

AUTHORIZE_LIMITS: Mapping[str, int] = {
    "client_id": MAX_URI,  # a metadata document's URL, or a uuid
    "redirect_uri": MAX_URI,
    "resource": MAX_URI,
    "state": MAX_STATE,
    "scope": 1000,
    "code_challenge": 128,
    "code_challenge_method": 16,
    "response_type": 32,
}
"""The longest value each authorization request parameter may have."""

TOKEN_LIMITS: Mapping[str, int] = {
    "client_id": MAX_URI,
    "client_secret": 256,
    "redirect_uri": MAX_URI,
    "resource": MAX_URI,
    "scope": 1000,
    "code": 256,
    "code_verifier": 128,  # RFC 7636 section 4.1: 43 to 128 characters
    "refresh_token": 256,
    "token": 256,
    "token_type_hint": 32,
    "grant_type": 128,
}
"""The same for the token and revocation endpoints."""


def oversized(params: Mapping[str, Any], limits: Mapping[str, int]) -> str | None:
    """The description of the first parameter longer than its limit, if one is."""
    for name, limit in limits.items():
        value = params.get(name)
        if isinstance(value, str) and len(value) > limit:
            return f"{name} is longer than {limit} characters"
    return None


async def read_form(request: Request) -> FormData:
    """The request's form (which starlette keeps, so the SDK handler reads the same one);
    `SignInRefused` (invalid_request) when it cannot be read within the limits."""
    try:
        return await request.form(
            max_files=0, max_fields=MAX_FORM_FIELDS, max_part_size=_MAX_FORM_FIELD_BYTES
        )
    except (MultiPartException, HTTPException) as exc:
        detail = exc.message if isinstance(exc, MultiPartException) else exc.detail
        raise SignInRefused("invalid_request", f"the form cannot be read: {detail}") from None
