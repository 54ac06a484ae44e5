"""The addresses of the HTTP request being served, for its server span (`client.address`,
`client.port`, `server.address`, `server.port`): an ASGI middleware sets them, only with tracing
on, and `tracing.py` reads them once the request has been answered."""

from __future__ import annotations

import contextvars
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["PeerAddress", "add_peer"]

# (client host, client port, server host, server port) of the HTTP request being served.
_PEER: contextvars.ContextVar[tuple[Any, Any, Any, Any] | None] = contextvars.ContextVar(
    "mcpgw_peer", default=None
)


class PeerAddress:
    """ASGI middleware (only with tracing on): the request's addresses, for its server span."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client, server = scope.get("client") or (None, None), scope.get("server") or (None, None)
        token = _PEER.set((client[0], client[1], server[0], server[1]))
        try:
            await self.app(scope, receive, send)
        finally:
            _PEER.reset(token)


def add_peer(attributes: dict[str, Any]) -> None:
    """Add the addresses of the request being served, those it has, to `attributes`."""
    peer = _PEER.get()
    if peer is None:
        return
    client_host, client_port, server_host, server_port = peer
    if client_host:
        attributes["client.address"] = client_host
        if client_port:
            attributes["client.port"] = client_port
    if server_host:
        attributes["server.address"] = server_host
        if server_port:
            attributes["server.port"] = server_port
