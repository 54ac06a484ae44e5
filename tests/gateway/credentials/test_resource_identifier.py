"""Which RFC 9728 resource identifiers the gateway accepts for an upstream's MCP URL: the URL, or
its origin when the metadata sits at the origin's root well-known path, and no other. (The whole
flow with an origin-wide resource is in test_oauth_upstream.py.)"""

from __future__ import annotations

import pytest

from gateway.credentials.oauth import _describes

MCP = "https://mcp.example.com/mcp"
ROOT = "https://mcp.example.com/.well-known/oauth-protected-resource"
PATHED = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"


@pytest.mark.parametrize(
    ("resource", "found_at", "accepted"),
    [
        (MCP, PATHED, True),
        (MCP + "/", ROOT, True),
        ("https://mcp.example.com/", ROOT, True),
        ("https://mcp.example.com", ROOT, True),
        ("https://mcp.example.com/", PATHED, False),  # the origin only from the root document
        ("https://other.example.com/", ROOT, False),
        ("https://mcp.example.com:8443/", ROOT, False),
        ("http://mcp.example.com/", ROOT, False),
        ("https://mcp.example.com/other", ROOT, False),
        ("https://mcp.example.com/", "https://other.example.com/.well-known/oauth-protected-resource", False),
    ],
)
def test_a_resource_identifier_is_accepted_only_for_this_url_or_its_own_origin(
    resource: str, found_at: str, accepted: bool
) -> None:
    assert _describes(resource, MCP, found_at) is accepted
