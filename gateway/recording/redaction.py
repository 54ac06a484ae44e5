"""What keeps secrets out of the record: redaction by key name and by value, and a size cap.

Two passes, both before anything is written:
- **key names**: any value under a key whose words contain a secret-looking name
  (`authorization`, `password`, `token`, `api_key`, …) is replaced, whatever its type, also
  inside strings that hold JSON (a JSON-encoded argument, a tool's JSON text content).
  Keys are split into words at case changes and separators, and a secret name matches any run
  of consecutive words whatever their case and separators (`accessKey`, `ACCESS-KEY` and
  `access_key` are all access+key; `pass_code` is passcode), so `token` catches
  `refresh_token` but not `max_tokens`. `pass` counts only as a key's last word (`pass`,
  `db_pass`, `smtpPass`), so `pass_through` and `pass_rate` are kept.
  A name/value pair is treated as a key and its value: a two-item list whose first item is a
  secret name (`[["X-Api-Key", "…"]]`, how header lists are often written) and an object of
  exactly `name` and `value` (`[{"name": "Cookie", "value": "…"}]`, as in HAR files).
- **values**: substrings of any string that look like credentials (bearer tokens, JWTs, PEM
  private keys, well-known key prefixes such as `sk-`, `ghp_`, `AKIA`, `mgw_` (and the
  `mga_`, `mgr_`, `mgc_` of hosts' sign-in tokens and codes), the password
  of a `scheme://user:password@host` URL, a connect link's token) are replaced, in text
  content too; so is the value of an assignment in text whose name is a secret key
  (`password=…`, `PWD: '…'`, `?access_token=…`). Patterns run on each string value, never on
  the JSON text, so no pattern can break the JSON. An assignment's value is quoted, or runs to
  whitespace or a quote, ampersands, commas and semicolons included, except where one of those
  starts the next pair (`&x=1`, `,db=main`) or a comma or semicolon ends the value before
  whitespace: so `password=Tr0ub4dor&3xyz retrying` loses the whole password and keeps
  `retrying`, and a query string (where a literal `&` is `%26`) loses only the one value.

`redact_text` applies the value rules to one line of text: the gateway's log uses it for what
stdio upstreams write on stderr.

Then the JSON text is capped at `max_bytes` (UTF-8), cut at a character boundary and flagged,
so a truncated value is no longer valid JSON and says so. Values nested deeper than
`MAX_RECORDED_DEPTH` are replaced by `NESTED_TOO_DEEP` and flagged the same way: a host may send
(and an upstream answer) JSON deeper than the encoder goes, and its record must still be written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import orjson

__all__ = ["DEFAULT_SECRET_KEYS", "DEFAULT_SECRET_PATTERNS", "REDACTED", "Redactor"]

REDACTED = "[REDACTED]"
NESTED_TOO_DEEP = "[TRUNCATED: nested too deep]"
MAX_RECORDED_DEPTH = 128  # well inside both the encoder's 254 and Python's recursion limit
_SECRET_MARGIN = 16 * 1024  # longer than any secret a pattern matches (PEM keys included)

DEFAULT_SECRET_KEYS: tuple[str, ...] = (
    "authorization",
    "auth",
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "passcode",
    "secret",
    "token",
    "api_key",
    "access_key",
    "private",
    "private_key",
    "session_key",
    "signature",
    "cookie",
    "credential",
    "credentials",
)

# The built-in value patterns, each with text every match of it contains (a regular expression
# too): a string holding none of them is not scanned by the patterns, which costs several
# microseconds per string, for every string of every call.
_BUILT_IN: tuple[tuple[str, str], ...] = (
    (r"\b(?i:bearer|basic)\s+[A-Za-z0-9\-._~+/]{8,}=*", "[bB][eE][aA][rR][eE][rR]|[bB][aA][sS][iI][cC]"),
    (r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*", "eyJ"),  # JWT (JWS compact form)
    (
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[^\"\\]*(?:\\n[^\"\\]*)*-----END [A-Z ]*PRIVATE KEY-----",
        "-----BEGIN ",
    ),
    (r"\bmg[wacr]_[A-Za-z0-9_-]{20,}", "mg[wacr]_"),  # mcpgw API keys; sign-in tokens and codes
    (r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}", "sk-"),  # Anthropic, OpenAI
    (r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})", "gh[pousr]_|github_pat_"),  # GitHub
    (r"\bglpat-[A-Za-z0-9_-]{20,}", "glpat-"),  # GitLab
    (r"\bxox[abposr]-[A-Za-z0-9-]{10,}", "xox[abposr]-"),  # Slack
    (r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", "AKIA|ASIA"),  # AWS access key ids
    (r"\bAIza[0-9A-Za-z_-]{35}", "AIza"),  # Google API keys
    (r"\b[rsp]k_(?:live|test)_[A-Za-z0-9]{16,}", "k_live_|k_test_"),  # Stripe
    (r"\bnpm_[A-Za-z0-9]{36}\b", "npm_"),
    (r"\bpypi-[A-Za-z0-9_-]{50,}", "pypi-"),
    (r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)", "://"),  # user:password in a URL
    (r"(?<=/connect/)[A-Za-z0-9_-]{32,}", "/connect/"),  # the gateway's own connect links: capabilities
)
DEFAULT_SECRET_PATTERNS: tuple[str, ...] = tuple(pattern for pattern, _ in _BUILT_IN)
_MARKER_OF = dict(_BUILT_IN)

# Secret only as a key's last word: `db_pass` is a password, `pass_through` is not.
_SECRET_LAST_WORDS = frozenset({"pass"})

_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# `name = value`, `name: 'value'`, `?name=value&`: the value is replaced when the name is secret.
# A name starts only where a word does and is at most 64 characters, so a long run of letters
# costs one short attempt, not one per letter (which made a 16 KB word take seconds). The value
# is read only after a secret name, and the scan goes on right after a name that is not (its
# "value" may hold the assignment that is: `failed: password=…`), so each character is read a
# bounded number of times.
_NAME = r"[A-Za-z_][A-Za-z0-9_.-]{0,63}"
_ASSIGNED = re.compile(rf"""(?<![A-Za-z0-9_.-])({_NAME})(\s*[=:]\s*)""")
_VALUE = re.compile(rf""""[^"]*"|'[^']*'|(?:[^\s"',;&]|&(?!{_NAME}=)|[,;](?!\s|$|{_NAME}=))+""")


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
        self._joined = frozenset("".join(_words(k)) for k in keys if _words(k))
        self._longest = max(map(len, self._joined), default=0)
        built_in = [p for p in patterns if p in _MARKER_OF]
        configured = [p for p in patterns if p not in _MARKER_OF]
        self._built_in = _either(built_in)
        self._markers = _either([_MARKER_OF[p] for p in built_in])
        self._configured = _either(configured)  # scanned for in every string: no marker known
        self._max_bytes = max_bytes
        self._cached_is_secret_key = lru_cache(maxsize=4096)(self._is_secret_key)

    @classmethod
    def with_defaults(
        cls, keys: Sequence[str] = (), patterns: Sequence[str] = (), max_bytes: int = 64 * 1024
    ) -> Redactor:
        """The built-in rules plus configured ones (`recording.redact`): for the record and the log."""
        return cls(
            keys=(*DEFAULT_SECRET_KEYS, *keys),
            patterns=(*DEFAULT_SECRET_PATTERNS, *patterns),
            max_bytes=max_bytes,
        )

    def is_secret_key(self, key: str) -> bool:
        # Keys come from hosts and upstreams: only short ones are cached, so the cache cannot
        # be made to hold megabytes.
        return self._cached_is_secret_key(key) if len(key) <= 64 else self._is_secret_key(key)

    def _is_secret_key(self, key: str) -> bool:
        # A secret written as one word ("apikey") or as several ("api_key", "ApiKey") joins to
        # the same text; so any run of the key's words, joined, that is a secret is one.
        words = _words(key)
        if words and words[-1] in _SECRET_LAST_WORDS:
            return True
        for start in range(len(words)):
            joined = ""
            for end in range(start, len(words)):
                joined += words[end]
                if len(joined) > self._longest:
                    break
                if joined in self._joined:
                    return True
        return False

    def redact_text(self, text: str) -> str:
        """`text` with secret-looking values and assignments to secret-looking names replaced."""
        if self._built_in is not None and self._markers is not None and self._markers.search(text):
            text = self._built_in.sub(REDACTED, text)
        if self._configured is not None:
            text = self._configured.sub(REDACTED, text)
        if "=" not in text and ":" not in text:
            return text  # no assignment to look at
        pieces: list[str] = []
        done = 0  # text[:done] is in pieces
        found = _ASSIGNED.search(text)
        while found is not None:
            after = found.end()
            value = _VALUE.match(text, after) if self.is_secret_key(found.group(1)) else None
            if value is not None and value.group(0) != REDACTED:
                pieces += (text[done:after], REDACTED)
                done = after = value.end()
            found = _ASSIGNED.search(text, after)
        return "".join((*pieces, text[done:])) if pieces else text

    def clean(self, value: Any) -> Any:
        """`value` with secrets replaced; the very same object where nothing changed."""
        return self._clean(value, 0, _Cut())

    def _clean(self, value: Any, depth: int, cut: _Cut) -> Any:
        if isinstance(value, dict | list) and depth >= MAX_RECORDED_DEPTH:
            cut.happened = True
            return NESTED_TOO_DEEP
        if isinstance(value, dict):
            out: dict[str, Any] | None = None
            named = value.keys() == {"name", "value"} and isinstance(value["name"], str)
            for key, item in value.items():
                secret = isinstance(key, str) and self.is_secret_key(key)
                if named and key == "value":
                    secret = self.is_secret_key(value["name"])
                new = REDACTED if secret else self._clean(item, depth + 1, cut)
                if new is not item:
                    out = dict(value) if out is None else out
                    out[key] = new
            return value if out is None else out
        if isinstance(value, list):
            if len(value) == 2 and isinstance(value[0], str) and self.is_secret_key(value[0]):
                return value if value[1] == REDACTED else [value[0], REDACTED]  # a [name, value] pair
            items = [self._clean(item, depth + 1, cut) for item in value]
            return value if all(a is b for a, b in zip(items, value, strict=True)) else items
        if isinstance(value, str):
            return self._clean_text(value, depth, cut)
        return value

    def _clean_text(self, text: str, depth: int, cut: _Cut) -> str:
        if cut.max_chars is not None and len(text) > cut.max_chars:
            # Past the cap it would be cut from the record anyway: only what can be kept is
            # redacted (the margin keeps a secret that straddles the cap whole, so it is matched).
            text, cut.happened = text[: cut.max_chars], True
        if text[:1] in ("{", "["):
            # JSON carried as a string (arguments, text content) is cleaned as structure too,
            # and re-serialised only when something in it changed.
            try:
                parsed = orjson.loads(text)
            except orjson.JSONDecodeError:
                pass
            else:
                cleaned = self._clean(parsed, depth, cut)
                return text if cleaned is parsed else orjson.dumps(cleaned).decode()
        replaced = self.redact_text(text)
        return text if replaced == text else replaced

    def render(self, value: Any) -> tuple[str | None, bool]:
        """`value` as redacted JSON text, capped; and whether it was truncated. None stays None."""
        if value is None:
            return None, False
        cut = _Cut(self._max_bytes + _SECRET_MARGIN)
        encoded = orjson.dumps(self._clean(value, 0, cut))
        if len(encoded) <= self._max_bytes:
            return encoded.decode(), cut.happened
        return encoded[: self._max_bytes].decode("utf-8", "ignore"), True


def _either(patterns: Sequence[str]) -> re.Pattern[str] | None:
    """One pattern matching any of `patterns`; None for none."""
    return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None


class _Cut:
    """Whether cleaning cut a value short (one per `render`, so the redactor stays shareable)."""

    __slots__ = ("happened", "max_chars")

    def __init__(self, max_chars: int | None = None) -> None:
        self.happened = False
        self.max_chars = max_chars  # strings longer than this are cut before they are redacted
