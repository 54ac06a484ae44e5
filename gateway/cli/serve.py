"""`mcpgw serve`: the gateway's app under uvicorn, on a socket bound before the app is built.

Binding first means the port is known (with `--port 0`, whichever one the kernel picked) when
the config is completed: the links the gateway hands out (connect pages, OAuth redirects) name
the address it really serves on, unless `public_url` says otherwise. A host that connects before
the gateway has started waits in the socket's backlog rather than being refused.
"""

from __future__ import annotations

import logging
import socket
import sys

import uvicorn

from gateway.app import build_app
from gateway.config import GatewayConfig
from gateway.host.limits import protocol_for

__all__ = ["serve"]

_BACKLOG = 2048  # uvicorn's default


class _Server(uvicorn.Server):
    """uvicorn's server, announcing where it serves once it does, as uvicorn does for sockets it
    binds itself (scripts and tests wait for this line)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
            logging.getLogger("uvicorn.error").info(
                "Uvicorn running on http://%s:%d (Press CTRL+C to quit)", host, sockets[0].getsockname()[1]
            )


def serve(config: GatewayConfig, host: str, port: int) -> int:
    """Serve `config` on `host`:`port` until stopped; the exit status."""
    try:
        sock = _listening_socket(host, port)
    except OSError as exc:
        print(f"mcpgw: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    served = config.served_at(host, sock.getsockname()[1])
    server_config = uvicorn.Config(
        build_app(served),
        host=host,
        port=served.listen.port,
        log_level="info",
        access_log=False,
        lifespan="on",
        http=protocol_for(served.security),  # head and body deadlines, header limits
    )
    _Server(server_config).run(sockets=[sock])
    return 0


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
