"""The demo upstream (`gateway.demo`) served over Streamable HTTP for the benchmark.

Same app and same ``READY http://127.0.0.1:<port>/mcp`` line as
``python -m gateway.demo --http --port 0``, with one difference: the listening socket is
created with ``proto=IPPROTO_TCP``. asyncio only sets ``TCP_NODELAY`` on accepted sockets
whose ``proto`` is ``IPPROTO_TCP`` (``asyncio.base_events._set_nodelay``); the stock demo
binds ``socket.socket(AF_INET, SOCK_STREAM)`` (proto 0), so Nagle stays on and every
JSON response written as headers + body waits ~40 ms for the client's delayed ACK. That
stall would make the DIRECT baseline of the 2026-07-28 runs meaningless.
``bench/run.py --stock-demo`` runs the unmodified demo instead.
"""

from __future__ import annotations

import argparse
import socket

import anyio
import uvicorn

from gateway.demo import build_app


def _listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


async def _serve(host: str, port: int) -> None:
    sock = _listening_socket(host, port)
    server = uvicorn.Server(uvicorn.Config(build_app(host=host), log_level="warning", lifespan="on"))
    # Connections queue in the listen backlog until uvicorn accepts them: the URL is usable now.
    print(f"READY http://{host}:{sock.getsockname()[1]}/mcp", flush=True)
    await server.serve(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    anyio.run(_serve, "127.0.0.1", args.port)


if __name__ == "__main__":
    main()
