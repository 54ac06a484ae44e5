"""stdio children get their three pipes and nothing else of the gateway's: above all not its
listening socket, which a child outliving a `kill -9` of the gateway would keep bound, so the
gateway could not start again on its port. They still end with the gateway (EOF on stdin).

Both ways a gateway gets its socket are run: `mcpgw serve` binds it, `tests/gateway_process.py`
inherits it from its parent (the way a socket-activating supervisor hands one down).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from anyio.abc import Process
from mcp import Client

from tests.gateway.cli.commands import free_port, serving
from tests.harness import demo_stdio_yaml, gateway_process, keyless_config
from tests.processes import children

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads descriptors from /proc")

TIMEOUT = 30.0
HOST = types.Implementation(name="descriptors", version="1")
TIME = """
  - name: time
    transport: stdio
    command: [python, -m, mcp_server_time, --local-timezone, UTC]
    cwd: .
    sessions: shared"""


def listening_inodes(port: int) -> set[str]:
    """The socket inodes listening on 127.0.0.1:`port`, from the kernel's TCP table (what `ss -ltn` reads)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and local == f"0100007F:{port:04X}":  # LISTEN, 127.0.0.1 little-endian
            inodes.add(inode)
    return inodes


def sockets_held(pid: int) -> set[str]:
    """The socket inodes among `pid`'s open descriptors."""
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                held.add(target[len("socket:[") : -1])
    return held


@asynccontextmanager
async def gateway_on(launcher: str, config: Path, port: int) -> AsyncIterator[Process]:
    """A gateway serving `config` on 127.0.0.1:`port` in a process of its own."""
    if launcher == "mcpgw serve":
        async with serving(config, port) as served:
            yield served.child.process
        return
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    async with gateway_process(config, sock) as running:
        yield running.process


async def call_both(url: str) -> None:
    async with Client(url, mode="2026-07-28", client_info=HOST, cache=None) as client:
        echoed = await client.call_tool("demo__echo", {"text": "up"})
        assert not echoed.is_error, echoed
        now = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
        assert not now.is_error, now


@pytest.mark.parametrize("launcher", ["mcpgw serve", "inherited socket"])
async def test_a_gateway_killed_with_9_starts_again_on_its_port_and_its_children_end(
    launcher: str, tmp_path: Path
) -> None:
    config = keyless_config(tmp_path, demo_stdio_yaml(sessions="shared", cwd=".") + TIME)
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    pidfds: list[int] = []
    try:
        with anyio.fail_after(TIMEOUT):
            async with gateway_on(launcher, config, port) as gateway:
                await call_both(url)
                pids = children("gateway.demo", tmp_path, gateway.pid) + children(
                    "mcp_server_time", tmp_path, gateway.pid
                )
                assert len(pids) == 2, pids
                pidfds = [os.pidfd_open(pid) for pid in pids]
                listening = listening_inodes(port)
                assert listening, "the gateway does not listen"
                for pid in pids:
                    assert not sockets_held(pid) & listening, (
                        f"child {pid} holds the gateway's listening socket"
                    )

                os.kill(gateway.pid, signal.SIGKILL)
                await gateway.wait()
                # At once, as a supervisor restarting it would: the port is free.
                with socket.socket() as again:
                    again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    again.bind(("127.0.0.1", port))
                    again.listen(1)

            # Its children read EOF on stdin and end by themselves.
            for pidfd in pidfds:
                await anyio.wait_readable(pidfd)  # readable once the process has exited

            async with gateway_on(launcher, config, port):
                await call_both(url)
    finally:
        for pidfd in pidfds:
            with suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
