"""A browser in front of several replicas behind one public URL, and the gateway URL they share.

`Steer` is an httpx2 transport: a request for the replicas' shared `public_url` goes to the
replica the test names (`steer.to = 2`), or to the next one in turn when it names none, as a
load balancer without affinity would send it; a request for anywhere else (an authorization
server, an OpenID provider) goes where it says. So a test can say that a sign-in's authorize
lands on A, its consent on B and its token request on C, whatever URL the page linked to.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Sequence

import httpx2

from tests.harness import base_url_of, listening_socket

__all__ = ["Steer", "shared_public_url"]


def shared_public_url() -> tuple[socket.socket, str]:
    """A loopback URL no replica listens on, for their common `public_url` (the socket holds the
    port, so nothing else takes it; nothing ever connects to it: `Steer` sends on)."""
    sock = listening_socket()
    return sock, base_url_of(sock)


class Steer(httpx2.AsyncBaseTransport):
    def __init__(self, public_url: str, replicas: Sequence[str]) -> None:
        public = httpx2.URL(public_url)
        self._public = (public.scheme, public.host, public.port)
        self._replicas = [httpx2.URL(url) for url in replicas]
        self._turns = itertools.cycle(range(len(replicas)))
        self._inner = httpx2.AsyncHTTPTransport()
        self.to: int | None = None  # the replica the next requests go to; None: each in turn
        self.sent: list[int] = []  # which replica each request for the public URL went to

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if (url.scheme, url.host, url.port) == self._public:
            index = next(self._turns) if self.to is None else self.to
            target = self._replicas[index]
            request.url = url.copy_with(scheme=target.scheme, host=target.host, port=target.port)
            self.sent.append(index)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
