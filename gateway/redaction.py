"""What keeps secrets out of the record: redaction by key name and by value, and a size cap.

Two passes, both before anything is written:
- **key names**: any value under a key whose words contain a secret-looking name
  (`authorization`, `password`, `token`, `api_key`, …) is replaced, whatever its type, also
  inside strings that hold JSON (a JSON-encoded argument, a tool's JSON text content).
  Keys are compared word by word (`accessToken`, `access_token` and `X-Access-Token` are the
  words access+token), so `token` catches `refresh_token` but not `max_tokens`.
- **values**: substrings of any string that look like credentials (bearer tokens, JWTs, PEM
  private keys, well-known key prefixes such as `sk-`, `ghp_`, `AKIA`, `mgw_`) are replaced,
  in text content too. Patterns run on each string value, never on the JSON text, so no
  pattern can break the JSON.

Then the JSON text is capped at `max_bytes` (UTF-8), cut at a character boundary and flagged,
so a truncated value is no longer valid JSON and says so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import orjson

__all__ = ["DEFAULT_SECRET_KEYS", "DEFAULT_SECRET_PATTERNS", "REDACTED", "Redactor"]

REDACTED = "[REDACTED]"

DEFAULT_SECRET_KEYS: tuple[str, ...] = (
    "authorization",
    "auth",
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "api_key",
    "private_key",
    "cookie",
    "credential",
    "credentials",
)

DEFAULT_SECRET_PATTERNS: tuple[str, ...] = (
    r"\b(?i:bearer|basic)\s+[A-Za-z0-9\-._~+/]{8,}=*",
    r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",  # JWT (JWS compact form)
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[^\"\\]*(?:\\n[^\"\\]*)*-----END [A-Z ]*PRIVATE KEY-----",
    r"\bmgw_[A-Za-z0-9_-]{20,}",  # mcpgw API keys
    r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}",  # Anthropic, OpenAI
    r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})",  # GitHub
    r"\bglpat-[A-Za-z0-9_-]{20,}",  # GitLab
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
    r"\bAIza[0-9A-Za-z_-]{35}",  # Google API keys
    r"\b[rsp]k_(?:live|test)_[A-Za-z0-9]{16,}",  # Stripe
    r"\bnpm_[A-Za-z0-9]{36}\b",
    r"\bpypi-[A-Za-z0-9_-]{50,}",
)

_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def _words(key: str) -> tuple[str, ...]:
    return tuple(w.lower() for w in _WORD.findall(key))


class Redactor:
    def __init__(
        self,
        *,
        keys: Sequence[str] = DEFAULT_SECRET_KEYS,
        patterns: Sequence[str] = DEFAULT_SECRET_PATTERNS,
        max_bytes: int = 64 * 1024,
    ) -> None:
        self._key_words = [_words(k) for k in keys if _words(k)]
        self._joined = frozenset("".join(words) for words in self._key_words)
        self._values = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        self._max_bytes = max_bytes
        self.is_secret_key = lru_cache(maxsize=4096)(self._is_secret_key)

    def _is_secret_key(self, key: str) -> bool:
        words = _words(key)
        if any(word in self._joined for word in words):  # "apikey", "accesstoken" as one word
            return True
        return any(
            words[i : i + len(secret)] == secret
            for secret in self._key_words
            for i in range(len(words) - len(secret) + 1)
        )

    def clean(self, value: Any) -> Any:
        """`value` with secrets replaced; the very same object where nothing changed."""
        if isinstance(value, dict):
            out: dict[str, Any] | None = None
            for key, item in value.items():
                new = REDACTED if isinstance(key, str) and self.is_secret_key(key) else self.clean(item)
                if new is not item:
                    out = dict(value) if out is None else out
                    out[key] = new
            return value if out is None else out
        if isinstance(value, list):
            items = [self.clean(item) for item in value]
            return value if all(a is b for a, b in zip(items, value, strict=True)) else items
        if isinstance(value, str):
            return self._clean_text(value)
        return value

    def _clean_text(self, text: str) -> str:
        if text[:1] in ("{", "["):
            # JSON carried as a string (arguments, text content) is cleaned as structure too,
            # and re-serialised only when something in it changed.
            try:
                parsed = orjson.loads(text)
            except orjson.JSONDecodeError:
                pass
            else:
                cleaned = self.clean(parsed)
                return text if cleaned is parsed else orjson.dumps(cleaned).decode()
        if self._values is None:
            return text
        replaced = self._values.sub(REDACTED, text)
        return text if replaced == text else replaced

    def render(self, value: Any) -> tuple[str | None, bool]:
        """`value` as redacted JSON text, capped; and whether it was truncated. None stays None."""
        if value is None:
            return None, False
        encoded = orjson.dumps(self.clean(value))
        if len(encoded) <= self._max_bytes:
            return encoded.decode(), False
        return encoded[: self._max_bytes].decode("utf-8", "ignore"), True
