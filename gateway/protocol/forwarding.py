"""Per-request values that ride along to the upstream without threading them through every call.

A 2026-07-28 host computes `Mcp-Param-*` headers from a tool's schema; the upstream checks
them against the body, so they must arrive unchanged. The stateless handler sets them here for
the task serving the request; the upstream channel reads them when it forwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from types import MappingProxyType

from mcp.shared.inbound import MCP_PARAM_HEADER_PREFIX

NO_HEADERS: Mapping[str, str] = MappingProxyType({})
forwarded_headers: ContextVar[Mapping[str, str]] = ContextVar("forwarded_headers", default=NO_HEADERS)


def param_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """The host's `Mcp-Param-*` headers (names lower-case, as ASGI gives them)."""
    prefix = MCP_PARAM_HEADER_PREFIX.lower()
    found = {name: value for name, value in headers.items() if name.startswith(prefix)}
    return found or NO_HEADERS
