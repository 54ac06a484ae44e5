"""Real servers for the tests: the gateway under uvicorn, the demo upstream, in-process SDK servers.

Everything listens on 127.0.0.1 on a port the kernel picks. The listening socket is bound
before the server starts, so a test can connect at once: the kernel queues the connection
until uvicorn accepts it, and nothing has to poll or sleep for readiness.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import uvicorn
from anyio.abc import Process
from starlette.types import ASGIApp

from gateway.app import Gateway, build_app
from gateway.config import SecurityConfig, load_config
from gateway.host.limits import protocol_for

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 30.0
INITIALIZE: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
"""A handshake-era host's first request, as the tests' raw HTTP clients send it."""


def listening_socket() -> socket.socket:
    """A loopback socket already listening on an ephemeral port, for `serve_asgi_on`."""
    # IPPROTO_TCP so asyncio sets TCP_NODELAY on accepted connections (no delayed-ACK stalls).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def base_url_of(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


@asynccontextmanager
async def serve_asgi_on(
    sock: socket.socket, app: ASGIApp, security: SecurityConfig | None = None
) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on `sock` (from `listening_socket`); yield its base URL.

    For apps that must know their own URL before they are built. Closes `sock` when done.
    uvicorn reads requests under the limits of `security` (the defaults if None), as `mcpgw serve` does.
    """
    http = protocol_for(security or SecurityConfig())
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False, http=http)
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        yield base_url_of(sock)
    finally:
        server.should_exit = True
        with anyio.fail_after(STARTUP_TIMEOUT):
            await task
        sock.close()


@asynccontextmanager
async def serve_asgi(app: ASGIApp) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on an ephemeral loopback port; yield its base URL."""
    async with serve_asgi_on(listening_socket(), app) as base_url:
        yield base_url


@dataclass
class RunningGateway:
    base_url: str
    app: Any

    @property
    def url(self) -> str:
        return f"{self.base_url}/mcp"

    @property
    def gateway(self) -> Gateway:
        gateway: Gateway = self.app.state.gateway
        return gateway


def write_config(directory: Path, text: str) -> Path:
    path = directory / "config.yaml"
    path.write_text(text)
    return path


@asynccontextmanager
async def serve_gateway(
    config_path: Path, sock: socket.socket | None = None
) -> AsyncIterator[RunningGateway]:
    """Run the gateway of `config_path`; on `sock` when its config must name its own URL."""
    config = load_config(config_path)
    app = build_app(config)
    async with serve_asgi_on(sock or listening_socket(), app, config.security) as base_url:
        # uvicorn accepts the queued connection only once the lifespan (store, recorder, API
        # routes) is up, so this answer is the readiness barrier for tests that look inside.
        async with httpx2.AsyncClient(timeout=STARTUP_TIMEOUT) as client:  # a child's imports: seconds
            with anyio.fail_after(STARTUP_TIMEOUT):
                (await client.get(f"{base_url}/healthz")).raise_for_status()
        yield RunningGateway(base_url, app)


def keyless_config(directory: Path, upstreams_yaml: str, extra_yaml: str = "") -> Path:
    """A key-less gateway config in `directory` with the given `upstreams:` entries."""
    return write_config(
        directory, f"database: ./gw.db\nauth: {{required: false}}\n{extra_yaml}upstreams:{upstreams_yaml}\n"
    )


def demo_stdio_yaml(name: str = "demo", extra: str = "", sessions: str = "per_host", cwd: str = "") -> str:
    """The demo over stdio; `per_host` unless asked (it asks hosts for input and samples their
    LLM mid-call, so a session of its own per host session is what it needs). `cwd` "." runs it
    in the config's directory, where `tests.processes.children` can tell it from others."""
    where = f"    cwd: {cwd}\n" if cwd else ""
    return f"""
  - name: {name}
    transport: stdio
    command: [python, -m, gateway.demo]
    env: {{PYTHONPATH: "{ROOT}"}}
    sessions: {sessions}
{where}{extra}"""


async def start_demo_http(*extra: str) -> tuple[Process, str]:
    """Start the demo upstream over Streamable HTTP; return the process and its /mcp URL."""
    return await _start_ready([sys.executable, "-m", "gateway.demo", "--http", "--port", "0", *extra])


async def start_conformance_upstream() -> tuple[Process, str]:
    """Start `scripts/conformance_upstream.py`, the upstream that speaks all of 2026-07-28 (the
    tasks extension included); return the process and its /mcp URL."""
    return await _start_ready(
        [sys.executable, str(ROOT / "scripts" / "conformance_upstream.py"), "--port", "0"]
    )


async def _start_ready(argv: list[str]) -> tuple[Process, str]:
    """Start a server that prints `READY <url>` once it listens; return it and the URL."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await anyio.open_process(argv, cwd=ROOT, env=env, stderr=None)
    try:
        assert proc.stdout is not None
        with anyio.fail_after(STARTUP_TIMEOUT):
            buffered = b""
            while b"\n" not in buffered:
                buffered += await proc.stdout.receive()
        line = buffered.decode().splitlines()[0]
        assert line.startswith("READY "), line
        return proc, line.split()[1]
    except BaseException:
        await stop_process(proc)
        raise


async def stop_process(proc: Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            with anyio.fail_after(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
    await proc.aclose()


@dataclass
class GatewayProcess:
    """A gateway running in a process of its own (see `tests/gateway_process.py`)."""

    process: Process
    base_url: str
    log: Path  # where its output goes

    @property
    def url(self) -> str:
        return f"{self.base_url}/mcp"

    def memory(self) -> tuple[int, int]:
        """Its resident set size now and at its peak so far, in bytes (from Linux's `/proc`)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines())
        return _bytes(fields["VmRSS"]), _bytes(fields["VmHWM"])


def _bytes(field: str) -> int:
    number, unit = field.split()
    assert unit == "kB", field
    return int(number) * 1024


@asynccontextmanager
async def gateway_process(
    config_path: Path, sock: socket.socket | None = None
) -> AsyncIterator[GatewayProcess]:
    """Run the gateway of `config_path` in a child process, on `sock` when its config must name
    its own URL; the child's output goes to `gateway.log` beside the config."""
    sock = sock or listening_socket()
    base_url = base_url_of(sock)
    log = config_path.parent / "gateway.log"
    command = [sys.executable, "-m", "tests.gateway_process", "--fd", str(sock.fileno()), str(config_path)]
    with log.open("wb") as output:
        proc = await anyio.open_process(
            command,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            pass_fds=[sock.fileno()],
        )
    sock.close()  # the child has its own copy of the listening socket
    try:
        # As in `serve_gateway`: the kernel queues this until the lifespan is up.
        async with httpx2.AsyncClient(timeout=STARTUP_TIMEOUT) as client:  # a child's imports: seconds
            with anyio.fail_after(STARTUP_TIMEOUT):
                (await client.get(f"{base_url}/healthz")).raise_for_status()
        yield GatewayProcess(proc, base_url, log)
    finally:
        await stop_process(proc)
