"""What keeps secrets out of the record: redaction by key name and by value, and a size cap.

Two passes, both before anything is written:
- **key names**: any value under a key whose words contain a secret-looking name
  (`authorization`, `password`, `token`, `api_key`, …) is replaced, whatever its type, also
  inside strings that hold JSON (a JSON-encoded argument, a tool's JSON text content).
  Keys are compared word by word (`accessToken`, `access_token` and `X-Access-Token` are the
  words access+token), so `token` catches `refresh_token` but not `max_tokens`.
- **values**: substrings that look like credentials (bearer tokens, JWTs, PEM private keys,
  well-known key prefixes such as `sk-`, `ghp_`, `AKIA`, `mgw_`) are replaced wherever they
  appear, including inside text content and JSON-in-a-string. This pass runs over the JSON
  text, one C-speed regex pass; a match that would reach across a string boundary or cut an
  escape in two is left alone, so the text stays valid JSON.

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

# No pattern may match `"` or `\`: see the module docstring.
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


def _replace(match: re.Match[str]) -> str:
    found, start = match.group(), match.start()
    # A match must stay inside one JSON string and not cut an escape sequence in two, or the
    # text would stop being JSON. The built-in patterns cannot; a configured one might.
    crosses = '"' in found or found.endswith("\\") or (start > 0 and match.string[start - 1] == "\\")
    return found if crosses else REDACTED


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

    def _by_key(self, value: Any) -> Any:
        """`value` with every value under a secret-looking key replaced; shared where unchanged."""
        if isinstance(value, dict):
            out: dict[str, Any] | None = None
            for key, item in value.items():
                new = REDACTED if isinstance(key, str) and self.is_secret_key(key) else self._by_key(item)
                if new is not item:
                    out = dict(value) if out is None else out
                    out[key] = new
            return value if out is None else out
        if isinstance(value, list):
            items = [self._by_key(item) for item in value]
            return value if all(a is b for a, b in zip(items, value, strict=True)) else items
        if isinstance(value, str) and value[:1] in ("{", "["):
            return self._inside_string(value)
        return value

    def _inside_string(self, text: str) -> str:
        """JSON carried as a string (tool arguments and text content often are) is redacted as
        structure too; it is re-serialised only when something in it changed."""
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
        redacted = self._by_key(parsed)
        return text if redacted is parsed else orjson.dumps(redacted).decode()

    def render(self, value: Any) -> tuple[str | None, bool]:
        """`value` as redacted JSON text, capped; and whether it was truncated. None stays None."""
        if value is None:
            return None, False
        text = orjson.dumps(self._by_key(value)).decode()
        if self._values is not None:
            text = self._values.sub(_replace, text)
        encoded = text.encode()
        if len(encoded) <= self._max_bytes:
            return text, False
        return encoded[: self._max_bytes].decode("utf-8", "ignore"), True
