"""API key secrets: generation, hashing and the display prefix.

A secret is ``mgw_`` followed by 43 URL-safe characters from 32 random bytes. Such a token has
256 bits of entropy, so a fast hash is enough to store it safely (nobody can search that space);
a slow password hash (bcrypt, argon2) would only add latency to every request.
"""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["KEY_PREFIX", "PREFIX_LENGTH", "display_prefix", "generate_api_key", "hash_api_key"]

KEY_PREFIX = "mgw_"
"""Every secret starts with this, so scanners and redaction can recognise it."""

PREFIX_LENGTH = len(KEY_PREFIX) + 6
"""How many leading characters of a secret are stored for display."""


def generate_api_key() -> str:
    """Return a new secret: ``mgw_`` + ``secrets.token_urlsafe(32)`` (43 characters)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(secret: str) -> str:
    """Return the SHA-256 hex digest of ``secret``: what the store keeps and looks keys up by."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def display_prefix(secret: str) -> str:
    """Return the part of ``secret`` that may be shown to identify it (``mgw_ab12cd``)."""
    return secret[:PREFIX_LENGTH]
