"""What the request being traced learnt on its way upstream, for its client span.

The request context travels down explicitly (`protocol/context.py`); this is the one thing that
travels back up: which protocol revision the upstream session that carried the call had
negotiated (a 2025 session, a pool's, a 2026-07-28 upstream's stateless channel). Only a
request that `Tracing` serves has a `Hop`; otherwise `upstream_version` is one context-variable
look-up. Standard library only: the upstream channels import it, tracing on or off.
"""

from __future__ import annotations

import contextvars

__all__ = ["HOP", "Hop", "upstream_version"]


class Hop:
    __slots__ = ("call", "ended", "version")

    def __init__(self) -> None:
        self.call: object | None = None  # the request's CallRecord, once recorded
        self.ended: object | None = None  # the TaskEnded a tasks/get showed
        self.version: str | None = None  # mcp.protocol.version of the upstream session used


HOP: contextvars.ContextVar[Hop | None] = contextvars.ContextVar("mcpgw_hop", default=None)


def upstream_version(version: str | None) -> None:
    """The upstream session about to carry the traced request speaks `version`."""
    hop = HOP.get()
    if hop is not None:
        hop.version = version
