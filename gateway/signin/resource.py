"""The gateway's MCP URL as an OAuth protected resource (RFC 9728): its identifiers, the 401
challenge that tells a host where to sign in, and the metadata served for it.

`/mcp` and each `/mcp/{organisationId}` are resources of their own: a token is bound to the one
it was asked for (RFC 8707) and accepted there only. Their metadata lives at the path RFC 9728
section 3.1 derives from each: `/.well-known/oauth-protected-resource` + the resource's path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

__all__ = ["METADATA_PREFIX", "SCOPE", "ProtectedResource"]

METADATA_PREFIX = "/.well-known/oauth-protected-resource"
# The one scope: what an API key carries, the whole of the host's access. It is named so that a
# host that asks for a scope (as the MCP spec's scope selection does) asks for something known.
SCOPE = "mcp"


@dataclass(frozen=True, slots=True)
class ProtectedResource:
    public_url: str  # an origin (the config checks it): scheme://host[:port]

    @property
    def issuer(self) -> str:
        """The authorization server's issuer identifier: the gateway's own origin."""
        return self.public_url

    def url(self, organisation: str | None = None) -> str:
        """The resource identifier of `/mcp`, or of `/mcp/{organisation}`."""
        return f"{self.public_url}/mcp" if organisation is None else f"{self.public_url}/mcp/{organisation}"

    def organisation_of(self, resource: str) -> str | None:
        """The organisation a resource identifier of this gateway names, or None for `/mcp`."""
        prefix = f"{self.public_url}/mcp/"
        return resource[len(prefix) :] if resource.startswith(prefix) else None

    def metadata_url(self, organisation: str | None = None) -> str:
        # Percent-encoded: `organisation` is a path segment as a host spelled it (decoded), which
        # may hold anything, a quote or a control character among them, and goes into a header.
        path = "/mcp" if organisation is None else f"/mcp/{quote(organisation, safe='')}"
        return f"{self.public_url}{METADATA_PREFIX}{path}"

    def known(self, resource: str) -> str | None:
        """`resource` as this gateway names it, if it is one of its MCP URLs (a trailing slash,
        the case of scheme and host, percent-encoding and dot segments aside: `/mcp/%2e%2e` is
        `/`, no MCP URL); else None. Whether the organisation it names exists is the caller's
        question."""
        try:
            parts = urlsplit(resource)
        except ValueError:
            return None
        if parts.query or parts.fragment or "#" in resource:
            return None
        origin = f"{parts.scheme.lower()}://{parts.netloc.lower()}"
        if origin != self.public_url.lower():
            return None
        # Decoded, then resolved as RFC 3986 section 5.2 resolves a reference (urljoin removes
        # dot segments), so that no spelling of a path reaches the consent page as another.
        decoded = unquote(parts.path)
        if "//" in decoded or "\\" in decoded or not decoded.isprintable():
            return None  # not a path another spelling of which could be an MCP URL
        path = urlsplit(urljoin(f"{origin}/", decoded)).path.rstrip("/")
        if path == "/mcp":
            return self.url()
        organisation = path.removeprefix("/mcp/")
        if path.startswith("/mcp/") and organisation and "/" not in organisation:
            return self.url(organisation)
        return None

    def challenge(
        self, organisation: str | None, *, invalid_token: bool, description: str | None = None
    ) -> tuple[bytes, bytes]:
        """The `WWW-Authenticate` of a 401 (RFC 6750 section 3, RFC 9728 section 5.1): where the
        resource's metadata is, the scope to ask for, and `invalid_token` when a credential was
        sent and is not good (none when nothing was sent, as RFC 6750 asks), with what is wrong
        with it as `error_description` (a fixed text, which never holds a quote)."""
        error = 'error="invalid_token", ' if invalid_token else ""
        if description is not None:
            error += f'error_description="{description}", '
        value = f'Bearer {error}resource_metadata="{self.metadata_url(organisation)}", scope="{SCOPE}"'
        return (b"www-authenticate", value.encode())

    def metadata(self, organisation: str | None = None) -> dict[str, Any]:
        """RFC 9728 protected resource metadata."""
        return {
            "resource": self.url(organisation),
            "authorization_servers": [self.issuer],
            "scopes_supported": [SCOPE],
            "bearer_methods_supported": ["header"],
            "resource_name": "mcpgw",
        }
