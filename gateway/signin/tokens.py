"""The secrets the authorization server hands out: authorization codes, access and refresh tokens.

Each is 256 random bits from `secrets`, behind a prefix that says what it is (so the gateway
tells a token from an API key without a lookup, and redaction recognises all of them, as it
does `mgw_` keys). The store keeps only their SHA-256 hashes.
"""

from __future__ import annotations

import secrets

__all__ = ["ACCESS_PREFIX", "CODE_PREFIX", "REFRESH_PREFIX", "is_access_token", "new_secret"]

ACCESS_PREFIX = "mga_"
REFRESH_PREFIX = "mgr_"
CODE_PREFIX = "mgc_"


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def is_access_token(secret: str) -> bool:
    return secret.startswith(ACCESS_PREFIX)
