"""What one value in the config file must look like: the validators the schema attaches to its
keys. Each raises ValueError with the reason a person reads; placeholders always produce text, so
the number and boolean readers accept it too."""

import re
from collections.abc import Callable
from typing import Literal
from urllib.parse import SplitResult, urlsplit

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey, import_key


def _number_from_text(value: object, number: Callable[[str], object]) -> object:
    # Placeholders always produce strings, so `port: ${PORT}` must still be able to become a number.
    if isinstance(value, str):
        try:
            return number(value.strip())
        except ValueError:
            return value
    return value


def int_from_text(value: object) -> object:
    return _number_from_text(value, int)


def float_from_text(value: object) -> object:
    return _number_from_text(value, float)


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def bool_from_text(value: object) -> object:
    if isinstance(value, str):
        return _BOOL_WORDS.get(value.strip().lower(), value)
    return value


def check_name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9-]+", value):
        raise ValueError(f"upstream name must match ^[a-z0-9-]+$, got {value!r}")
    return value


def check_prefix(value: str) -> str:
    # The prefix becomes part of every tool name a host sees; some hosts accept only these characters.
    if not re.fullmatch(r"[A-Za-z0-9_-]*", value):
        raise ValueError(f"prefix may contain only letters, digits, '_' and '-', got {value!r}")
    return value


def check_uri_prefix(value: str) -> str:
    # Put before a URI's scheme, it must leave a scheme (RFC 3986: a letter, then letters, digits,
    # "+", "-" or "."); the final "+" keeps the upstream's own scheme readable, as in git+https.
    if value and not re.fullmatch(r"[a-z][a-z0-9.+-]*\+", value):
        raise ValueError(f"uri_prefix must match ^[a-z][a-z0-9.+-]*\\+$ (like 'a+'), got {value!r}")
    return value


def _split_url(value: str) -> SplitResult | None:
    """The URL's parts, or None when it does not parse (a malformed port included)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a malformed port
    except ValueError:
        return None
    return parts


def check_url(value: str) -> str:
    parts = _split_url(value)
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
    return value


def check_origin(value: str) -> str:
    parts = _split_url(value)
    # A browser's Origin header never has a path, so "http://localhost:3000/" could never match.
    if parts is None or not parts.scheme or not parts.hostname or parts.path or parts.query or parts.fragment:
        raise ValueError(
            f"must be an origin like 'http://localhost:3000' (no path or trailing '/'), got {value!r}"
        )
    return value


def check_host(value: str) -> str:
    if not value or "/" in value or any(c.isspace() for c in value):
        raise ValueError(
            f"must be a host name with an optional port, like 'mcp.example.com:8443', got {value!r}"
        )
    return value


# Framing and connection headers: mcpgw sets these itself, and a second value would let the
# upstream read the request differently from how it was sent.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                               "te", "trailer", "upgrade", "expect"})  # fmt: skip


def check_header_name(value: str) -> str:
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
        raise ValueError(f"not a valid HTTP header name: {value!r}")
    if value.lower() in _RESERVED_HEADERS:
        raise ValueError(f"{value!r} is set by mcpgw itself and cannot be configured")
    return value


def check_header_value(value: str) -> str:
    # A CR or LF would let a value (often from the environment) inject further headers.
    if any(c in value for c in "\r\n\0"):
        raise ValueError("an HTTP header value must not contain CR, LF or NUL")
    return value


def check_scope(value: str) -> str:
    if not re.fullmatch(r"[\x21\x23-\x5b\x5d-\x7e]+", value):  # RFC 6749 section 3.3
        raise ValueError(f"a scope is one word of printable ASCII, no quotes or backslashes: {value!r}")
    return value


def check_env_name(value: str) -> str:
    if not value or "=" in value or "\0" in value:
        raise ValueError(f"not a valid environment variable name: {value!r}")
    return value


def check_pattern(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from exc
    try:
        re.compile(f"(?:{value})|x")  # the patterns are joined into one alternation
    except re.error as exc:
        raise ValueError(f"{exc}; write flags scoped, like (?i:secret)") from exc
    return value


def check_no_nul(value: str) -> str:
    if "\0" in value:
        raise ValueError("must not contain a NUL character")
    return value


SigningKey = RSAKey | ECKey | OKPKey
_KEY_TYPES: tuple[Literal["RSA", "EC", "OKP"], ...] = ("RSA", "EC", "OKP")
_EC_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


def signing_key(pem: str) -> tuple[SigningKey, str] | None:
    """The private key a PEM text holds (RSA, EC or Ed25519/Ed448), with the JWS algorithm it
    usually signs with; None when it holds no private key of those types."""
    for key_type in _KEY_TYPES:
        try:
            key = import_key(pem, key_type)
        except (ValueError, TypeError, JoseError):
            continue
        if not isinstance(key, (RSAKey, ECKey, OKPKey)) or not key.is_private:
            return None
        if isinstance(key, ECKey):
            alg = _EC_ALGS.get(key.curve_name)
            return None if alg is None else (key, alg)
        return key, "RS256" if isinstance(key, RSAKey) else "EdDSA"
    return None
