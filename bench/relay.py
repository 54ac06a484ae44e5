"""A TCP relay that does nothing but copy bytes: the cheapest possible proxy, for `run.py --relay`.

Each accepted connection gets its own connection to the upstream; bytes are passed on as they
arrive, both ways, with no parsing. Measured against the upstream called directly, it shows
what any process in the middle costs on this machine (its own CPU, and the CPU it takes from
the load generator and the upstream on the same cores): the ceiling for the gateway's ratio.

    python bench/relay.py --upstream http://127.0.0.1:PORT/mcp [--port 0]

prints ``READY http://127.0.0.1:<port>/mcp`` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import urllib.parse
from typing import cast

import uvloop


class _Side(asyncio.Protocol):
    """One end of a relayed pair: what it receives is written to the other end."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self._early: list[bytes] = []  # received before the other end was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)

    def pair(self, peer: _Side) -> None:
        self.peer, peer.peer = peer, self
        for side in (self, peer):
            for data in side._early:
                side.data_received(data)
            side._early.clear()

    def data_received(self, data: bytes) -> None:
        if self.peer is None or self.peer.transport is None:
            self._early.append(data)
        elif not self.peer.transport.is_closing():
            self.peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class _Downstream(_Side):
    """The client's connection; its own connection to the upstream is opened as it arrives."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self._upstream = (host, port)
        self._connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._connecting = asyncio.ensure_future(self._connect())  # kept: tasks are weakly held

    async def _connect(self) -> None:
        try:
            _, upstream = await asyncio.get_running_loop().create_connection(_Side, *self._upstream)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        if self.transport is None or self.transport.is_closing():  # the client has gone already
            if upstream.transport is not None:
                upstream.transport.close()
            return
        self.pair(upstream)


async def _serve(upstream_url: str, port: int) -> None:
    parts = urllib.parse.urlsplit(upstream_url)
    upstream_port = parts.port
    assert parts.hostname == "127.0.0.1" and upstream_port is not None, upstream_url
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Downstream("127.0.0.1", upstream_port), "127.0.0.1", port)
    listening = server.sockets[0].getsockname()[1]
    print(f"READY http://127.0.0.1:{listening}{parts.path}", flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    uvloop.run(_serve(args.upstream, args.port))


if __name__ == "__main__":
    main()
