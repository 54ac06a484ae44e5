"""Several gateway replicas on one PostgreSQL database, and a host that round-robins between them.

`replica_configs` writes one config per replica (same database, same `secrets.key`, same
upstreams); `serve_replicas` runs them in this process (each its own app, store, pool and
LISTEN connection: they reach each other only through the database, as separate machines
would), `tests.harness.gateway_process` runs one in a process of its own (to `kill -9` it).
`RoundRobin` is an httpx2 transport that sends each request to the next replica in turn, as a
load balancer without affinity does: a host's consecutive requests land on different replicas.
"""

from __future__ import annotations

import base64
import itertools
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx2

from tests.harness import RunningGateway, serve_gateway

__all__ = ["RoundRobin", "new_secrets_key", "replica_configs", "serve_replicas"]


def new_secrets_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def replica_configs(
    directory: Path, database_url: str, upstreams_yaml: str, *, replicas: int = 2, extra_yaml: str = ""
) -> list[Path]:
    """One config per replica in `directory/replica-N/`: `extra_yaml` (top-level keys, each line
    ending in a newline) goes into every one; the same sealing key in all."""
    key = new_secrets_key()
    paths = []
    for n in range(replicas):
        folder = directory / f"replica-{n}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "config.yaml"
        path.write_text(
            f"database: {database_url}\nsecrets: {{key: {key}}}\n{extra_yaml}upstreams:{upstreams_yaml}\n"
        )
        paths.append(path)
    return paths


@asynccontextmanager
async def serve_replicas(configs: Sequence[Path]) -> AsyncIterator[list[RunningGateway]]:
    """Run each config's gateway under uvicorn in this process; yield them, started in order."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(serve_gateway(config)) for config in configs]


class RoundRobin(httpx2.AsyncBaseTransport):
    """Each request goes to the next of `base_urls` (scheme, host and port replaced; path and
    query kept), whatever URL the client used."""

    def __init__(self, base_urls: Sequence[str]) -> None:
        self._targets = itertools.cycle([httpx2.URL(url) for url in base_urls])
        self._inner = httpx2.AsyncHTTPTransport()
        self.sent: list[str] = []  # which replica each request went to, in order

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        target = next(self._targets)
        request.url = request.url.copy_with(scheme=target.scheme, host=target.host, port=target.port)
        request.headers["host"] = request.url.netloc.decode()
        self.sent.append(f"{target.scheme}://{target.host}:{target.port}")
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
