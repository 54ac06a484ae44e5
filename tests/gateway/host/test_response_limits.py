"""Clients cannot make the gateway hold memory by not reading, nor by opening connections without
end: an answer not read for `write_timeout_s` has its connection closed, and past
`max_connections` open connections one more is answered 503 and closed at once.

Raw sockets (asyncio streams), as in test_limits.py: the client here does exactly what an
abusive one would. The gateway runs in a process of its own where its memory is measured.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from tests.gateway.host.test_limits import connect, head, post, send_quietly, until_closed
from tests.gateway.host.test_stateless import envelope, routing_headers
from tests.harness import RunningGateway, demo_stdio_yaml, gateway_process, keyless_config, serve_gateway

WRITE_S = 1.0
MAX_CONNECTIONS = 20
ANSWER_BYTES = 8 * 1024 * 1024  # more than the kernel buffers a socket (tcp_wmem's 4 MiB at most)
LIMITS = (
    f"security: {{write_timeout_s: {WRITE_S}, max_connections: {MAX_CONNECTIONS},"
    f" max_body_bytes: {2 * ANSWER_BYTES}}}\n"
)
TIMEOUT = 30.0


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    async with serve_gateway(keyless_config(tmp_path, demo_stdio_yaml(sessions="shared"), LIMITS)) as running:
        yield running


def big_echo(n: int) -> bytes:
    """A 2026-07-28 call whose answer is about ANSWER_BYTES long."""
    message = {
        **envelope("tools/call", {"name": "demo__echo", "arguments": {"text": "x" * ANSWER_BYTES}}),
        "id": n,
    }
    lines = [
        f"{name}: {value}"
        for name, value in routing_headers(message).items()
        if name not in ("accept", "content-type")
    ]
    return post(message, *lines)


async def unread(port: int, n: int) -> tuple[socket.socket, asyncio.StreamWriter]:
    """A client that asks for a large answer and never reads it (a small receive buffer, so the
    gateway's sends stall soon)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    _, writer = await asyncio.open_connection(sock=sock)
    await send_quietly(writer, big_echo(n))
    return sock, writer


def established(local: str, remote: str) -> bool:
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(tuple(row.split()[1:4]) == (local, remote, "01") for row in rows)


async def cut_off(sock: socket.socket, gateway_port: int) -> None:
    """Until the gateway has closed this connection: its end no longer established in the
    kernel's TCP table (gone, or FIN_WAIT: the kernel, not the gateway, holds what is unsent).
    Polled: the client must not read, and nothing reaches a client with a full receive buffer."""
    client_port = sock.getsockname()[1]
    ours = (f"0100007F:{gateway_port:04X}", f"0100007F:{client_port:04X}")  # 127.0.0.1, little-endian
    while established(*ours):  # noqa: ASYNC110 (polled: see the docstring)
        await anyio.sleep(0.05)


async def test_a_client_that_does_not_read_its_answer_has_its_connection_closed(
    tmp_path: Path,
) -> None:
    config = keyless_config(tmp_path, demo_stdio_yaml(sessions="shared"), LIMITS)
    async with gateway_process(config) as running:
        port = int(running.base_url.rsplit(":", 1)[1])
        with anyio.fail_after(TIMEOUT):
            warm, writer = await unread(port, 0)  # the child started, the first answer's buffers made
            await cut_off(warm, port)
            writer.close()
            before, _ = running.memory()
            print(f"RSS before: {before >> 20} MiB")
            clients = [await unread(port, n) for n in range(1, 6)]
            for sock, _ in clients:  # each is cut off by the gateway, without reading a byte
                await cut_off(sock, port)
            after, _ = running.memory()
            print(f"RSS after 5 unread answers cut off: {after >> 20} MiB")
        for _, writer in clients:
            writer.close()
    # What the answers cost while they were made stays with the allocator (RSS does not fall
    # back), so the bound is generous: 5 answers of 8 MB held and copied would be well above it.
    assert after - before < 120 * 1024 * 1024, (before, after)


async def test_past_max_connections_one_more_is_answered_503_and_the_rest_still_served(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.host.limits")
    held = []
    with anyio.fail_after(TIMEOUT):
        for _ in range(MAX_CONNECTIONS):  # half-open heads, as a flood would send
            reader, writer = await connect(gateway)
            await send_quietly(writer, head("/healthz")[:-4])
            held.append((reader, writer))
        reader, writer = await connect(gateway)
        refused = await until_closed(reader, TIMEOUT)
        writer.close()
        for _, held_writer in held:
            held_writer.close()
        for held_reader, _ in held:
            await until_closed(held_reader, TIMEOUT)
        # Once they are gone, a connection is served again.
        reader, writer = await connect(gateway)
        await send_quietly(writer, head("/healthz", "connection: close"))
        served = await until_closed(reader, TIMEOUT)
        writer.close()
    assert refused.startswith(b"HTTP/1.1 503 "), refused
    assert served.startswith(b"HTTP/1.1 200 "), served
    assert f"{MAX_CONNECTIONS} connections open" in caplog.text
