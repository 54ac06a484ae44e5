"""What `gateway.host.limits` costs per request: server CPU with uvicorn's plain httptools protocol
against `LimitedHttpProtocol`, side by side.

    python bench/http_limits.py [--requests 20000] [--connections 4] [--reps 5]

Each run starts a server child (uvicorn on uvloop, one protocol or the other, ABBA order),
warms it up, then sends `--requests` keep-alive requests over `--connections` connections, one
at a time on each, and reads the server's own CPU time (`time.process_time`, from `/_cpu`) before
and after. Two apps: `minimal` (reads the body, answers `{}`; only uvicorn and the protocol cost
anything) with a GET and a 300-byte POST, and the gateway's own app (no upstreams) with GET
/healthz. It prints the median CPU per request of each, and the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httptools
import uvicorn
import uvloop

ROOT = Path(__file__).resolve().parents[1]
BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"x": "y" * 220}}).encode()
HEADERS = (
    "host: 127.0.0.1\r\nuser-agent: bench\r\naccept: application/json, text/event-stream\r\n"
    "mcp-protocol-version: 2025-11-25\r\nmcp-session-id: 0123456789abcdef0123456789abcdef\r\n"
)
REQUESTS = {
    "GET": f"GET /healthz HTTP/1.1\r\n{HEADERS}\r\n".encode(),
    "POST": (
        f"POST /mcp HTTP/1.1\r\n{HEADERS}content-type: application/json\r\n"
        f"content-length: {len(BODY)}\r\n\r\n"
    ).encode()
    + BODY,
}
CPU = b"GET /_cpu HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"


# --- the server child


async def _minimal(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


def _with_cpu(app: Any) -> Any:
    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/_cpu":
            body = repr(time.process_time()).encode()
            headers = [(b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return wrapped


def serve(protocol: str, app_name: str) -> None:
    from gateway.config import SecurityConfig, load_config

    if app_name == "gateway":
        from gateway.app import build_app

        directory = Path(tempfile.mkdtemp(prefix="mcpgw-bench-"))
        (directory / "config.yaml").write_text("database: ./gw.db\nauth: {required: false}\nupstreams: []\n")
        app: Any = build_app(load_config(directory / "config.yaml"))
    else:
        app = _minimal
    http: Any = "httptools"
    if protocol == "limited":
        from gateway.host.limits import protocol_for

        http = protocol_for(SecurityConfig())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        _with_cpu(app), http=http, loop="uvloop", log_level="warning", access_log=False, lifespan="auto"
    )
    uvicorn.Server(config).run(sockets=[sock])


# --- the client


class _Counter:
    def __init__(self) -> None:
        self.done = 0
        self.body = b""

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done += 1


async def _connection(port: int, request: bytes, count: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    counter = _Counter()
    parser = httptools.HttpResponseParser(counter)
    for i in range(count):
        writer.write(request)
        while counter.done <= i:
            parser.feed_data(await reader.read(65536))
    writer.close()


async def _cpu(port: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    counter = _Counter()
    parser = httptools.HttpResponseParser(counter)
    writer.write(CPU)
    while not counter.done:
        parser.feed_data(await reader.read(65536))
    writer.close()
    return float(counter.body)


async def _measure(port: int, request: bytes, requests: int, connections: int) -> float:
    """Server CPU microseconds per request."""
    each = requests // connections
    await asyncio.gather(*(_connection(port, request, each // 5) for _ in range(connections)))  # warm-up
    before = await _cpu(port)
    await asyncio.gather(*(_connection(port, request, each) for _ in range(connections)))
    after = await _cpu(port)
    return (after - before) / (each * connections) * 1e6


def _run(protocol: str, app_name: str, method: str, args: argparse.Namespace) -> float:
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", protocol, "--app", app_name],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().decode()
        if not line.startswith("READY "):
            raise RuntimeError(f"server did not start: {line!r}")
        port = int(line.split()[1])
        return uvloop.run(_measure(port, REQUESTS[method], args.requests, args.connections))
    finally:
        child.terminate()
        child.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--serve", choices=["plain", "limited"], help=argparse.SUPPRESS)
    parser.add_argument("--app", choices=["minimal", "gateway"], default="minimal", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.app)
        return
    for app_name, method in (("minimal", "GET"), ("minimal", "POST"), ("gateway", "GET")):
        results: dict[str, list[float]] = {"plain": [], "limited": []}
        for rep in range(args.reps):
            order = ("plain", "limited") if rep % 2 == 0 else ("limited", "plain")
            for protocol in order:
                results[protocol].append(_run(protocol, app_name, method, args))
        plain, limited = (statistics.median(results[p]) for p in ("plain", "limited"))
        runs = {p: [round(x, 1) for x in results[p]] for p in results}
        print(
            f"{app_name:8} {method:4}  plain {plain:6.1f} us  limited {limited:6.1f} us  "
            f"difference {limited - plain:+5.1f} us ({(limited / plain - 1) * 100:+.1f}%)  runs: {runs}",
            flush=True,
        )


if __name__ == "__main__":
    main()
