"""The `mcpgw` command as a user runs it: a child process, with its output kept for the test to read."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import Process

from store import RecordedSession, Seek, open_sqlite_store
from tests.harness import ROOT

TIMEOUT = 30.0
MCPGW = [sys.executable, "-m", "gateway.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def mcpgw_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


async def run_mcpgw(*args: str, cwd: Path = ROOT) -> tuple[int, str, str]:
    with anyio.fail_after(TIMEOUT):
        done = await anyio.run_process([*MCPGW, *args], cwd=cwd, check=False, env=mcpgw_env())
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def copy_example(directory: Path, **replace: str) -> Path:
    text = (ROOT / "config.example.yaml").read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    path = directory / "config.yaml"
    path.write_text(text)
    return path


@dataclass
class Child:
    """A child process and what it has written on stderr so far."""

    process: Process
    output: bytearray = field(default_factory=bytearray)
    ended: bool = False  # its stderr has closed
    _grew: anyio.Event = field(default_factory=anyio.Event)

    @property
    def log(self) -> str:
        return self.output.decode(errors="replace")

    async def logged(self, text: bytes) -> None:
        """Until the child has written `text` on stderr."""
        while text not in self.output:
            assert not self.ended, f"it ended without writing {text!r}:\n{self.log}"
            await self._grew.wait()

    def _wrote(self, chunk: bytes) -> None:
        self.output += chunk
        self._grew.set()
        self._grew = anyio.Event()


@asynccontextmanager
async def child(command: list[str], cwd: Path, ready: bytes | None = None) -> AsyncIterator[Child]:
    """`command` as a child process, entered once `ready` appears on its stderr (if given); stopped
    with SIGTERM on leaving unless it has ended. Its stderr is read all along, so the pipe never fills."""
    proc = await anyio.open_process(command, cwd=cwd, env=mcpgw_env())
    started = Child(proc)
    async with anyio.create_task_group() as tg:

        async def read_log() -> None:
            assert proc.stderr is not None
            async for chunk in proc.stderr:
                started._wrote(chunk)
            started.ended = True
            started._wrote(b"")

        tg.start_soon(read_log)
        try:
            if ready is not None:
                with anyio.fail_after(TIMEOUT):
                    await started.logged(ready)
            yield started
        finally:
            with anyio.CancelScope(shield=True):
                await _end(proc)
    await proc.aclose()


async def _end(proc: Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    with anyio.move_on_after(10):
        await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


@dataclass
class Served:
    """A running `mcpgw serve`: its process (and log) and its MCP URL."""

    child: Child
    url: str

    @property
    def base_url(self) -> str:
        return self.url.removesuffix("/mcp")


@asynccontextmanager
async def serving(config: Path, port: int) -> AsyncIterator[Served]:
    """`mcpgw serve` as a child process, once uvicorn says it is listening."""
    command = [*MCPGW, "serve", "--config", str(config), "--port", str(port)]
    async with child(command, config.parent, ready=b"Uvicorn running on") as started:
        yield Served(started, f"http://127.0.0.1:{port}/mcp")


@asynccontextmanager
async def mcpgw_serve(config: Path, port: int) -> AsyncIterator[str]:
    """`mcpgw serve` as a child process; yields its MCP URL once uvicorn says it is listening."""
    async with serving(config, port) as served:
        yield served.url


async def recorded_sessions(database: Path) -> list[RecordedSession]:
    """Every session the record holds, newest activity first."""
    async with open_sqlite_store(database) as store:
        page = await store.list_sessions(None, api_key_id=None, seek=Seek(), limit=200)
    return list(page.rows)
