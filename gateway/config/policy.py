"""Rules the running gateway applies that a config value states: which tools a filter lets
through, which hosts are this machine, the URL of a gateway served on one of them, and which
URIs a signed-in host's client may be sent back to."""

import ipaddress
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

__all__ = ["ToolFilter", "is_loopback_host", "local_url", "redirect_uri_problem"]

# Schemes a browser runs or reads locally rather than hands to an application: never a redirect.
_NOT_REDIRECTS = frozenset({"javascript", "data", "file", "vbscript", "about", "blob", "filesystem"})


@dataclass(frozen=True, slots=True)
class ToolFilter:
    allow: tuple[str, ...] = ("*",)
    deny: tuple[str, ...] = ()

    def permits(self, name: str) -> bool:
        """True when some allow pattern matches `name` and no deny pattern does."""
        # fnmatchcase, not fnmatch: tool names are case-sensitive on every platform.
        return any(fnmatchcase(name, p) for p in self.allow) and not any(
            fnmatchcase(name, p) for p in self.deny
        )


def is_loopback_host(host: str) -> bool:
    bare = host.removeprefix("[").removesuffix("]")
    if bare.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def local_url(host: str, port: int) -> str:
    """The base URL of a gateway listening on `host`:`port`."""
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{host}:{port}"


def redirect_uri_problem(uri: str) -> str | None:
    """Why `uri` cannot be where a signed-in host's client is sent back to, or None.

    An absolute URI without a fragment (RFC 6749 section 3.1.2): https; plain http only to a
    loopback address (RFC 8252 section 7.3, which also lets the port vary at use); or a native
    app's private-use scheme, which must be a reverse domain name (RFC 8252 section 7.1).
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "not a URI"
    scheme = parts.scheme.lower()
    if not scheme:
        return "must be an absolute URI"
    if "#" in uri:
        return "must not have a fragment (RFC 6749 section 3.1.2)"
    if any(c.isspace() for c in uri):
        return "must not contain whitespace"
    if scheme in ("http", "https"):
        try:
            host = parts.hostname
            parts.port  # noqa: B018 -- raises ValueError for a malformed port
        except ValueError:
            return "has a malformed port"
        if not host:
            return "must name a host"
        if parts.username is not None or parts.password is not None:
            return "must not carry credentials"
        if scheme == "http" and not is_loopback_host(host):
            return (
                "plain http is allowed only to a loopback address (RFC 8252), like http://127.0.0.1/callback"
            )
        return None
    if scheme in _NOT_REDIRECTS:
        return f"the {scheme}: scheme cannot be a redirect URI"
    if "." not in scheme:
        return "a private-use scheme must be a reverse domain name, like com.example.app:/callback"
    return None
