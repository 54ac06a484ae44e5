"""The upstream HTTP client (`gateway/upstream/_wire.py`) against real servers on 127.0.0.1.

Well-behaved upstreams are uvicorn serving a small ASGI app. The faults (a malformed response,
a connection dropped mid-body, a server closing kept-alive connections without saying so) come
from plain asyncio TCP servers written for each test, because no well-behaved server makes them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.types import Receive, Scope, Send

from gateway.errors import ConnectTimeout, WireError
from gateway.upstream._wire import Pool
from tests.harness import listening_socket, serve_asgi

TIMEOUT = 10.0
Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class EchoApp:
    """Answers each request with its body; notes the client port each request came from."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.headers: list[dict[str, str]] = []
        self.hold: anyio.Event | None = None
        self.in_flight = 0
        self.all_in = anyio.Event()
        self.expect_in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.ports.append(scope["client"][1])
        self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if self.hold is not None:
            self.in_flight += 1
            if self.in_flight == self.expect_in_flight:
                self.all_in.set()
            await self.hold.wait()
        headers = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def raw_server(reply: Reply) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server answering each connection with `reply`; yields its URL and a list that
    grows by one per connection accepted."""
    accepted: list[int] = []
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await reply(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/mcp", accepted
    finally:
        server.close()
        for handler in handlers:  # a reply may still wait for a request that will not come
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


async def take_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A reply that never answers."""
    await read_request(reader)


def answer_once(response: bytes, *, keep_open: bool = False) -> Reply:
    """Read one request and send `response` as it is; then close, or keep the connection open
    so that only the client's parser can notice what is wrong."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response)
        await writer.drain()
        if keep_open:
            await reader.read()

    return reply


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return await reader.readexactly(int(line.split(b":")[1]))
    return b""


def pool_for(url: str, *, max_connections: int = 256, connect_s: float = 5.0) -> Pool:
    return Pool(
        url, {"x-static": "yes"}, connect_s=connect_s, user_agent="test", max_connections=max_connections
    )


async def post(pool: Pool, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    response = await pool.request("POST", headers or {}, body)
    try:
        return response.status, await response.read()
    finally:
        response.close()


async def test_calls_in_a_row_share_one_connection_and_carry_every_header() -> None:
    app = EchoApp()
    async with serve_asgi(app) as base_url, pool_for(f"{base_url}/mcp") as pool:
        with anyio.fail_after(TIMEOUT):
            for n in range(20):
                assert await post(pool, b"call %d" % n, {"Mcp-Session-Id": "abc"}) == (200, b"call %d" % n)
    assert len(set(app.ports)) == 1
    sent = app.headers[-1]
    assert sent["x-static"] == "yes" and sent["mcp-session-id"] == "abc" and sent["user-agent"] == "test"
    assert sent["host"] == base_url.removeprefix("http://")


async def test_a_request_header_replaces_the_configured_one_of_the_same_name() -> None:
    app = EchoApp()
    async with serve_asgi(app) as base_url, pool_for(f"{base_url}/mcp") as pool:
        with anyio.fail_after(TIMEOUT):
            await post(pool, b"x", {"X-Static": "per-user"})
    assert app.headers[0]["x-static"] == "per-user"


async def test_at_the_connection_cap_requests_wait_for_a_free_connection() -> None:
    app = EchoApp()
    app.hold, app.expect_in_flight = anyio.Event(), 2
    results: list[tuple[int, bytes]] = []
    async with serve_asgi(app) as base_url, pool_for(f"{base_url}/mcp", max_connections=2) as pool:

        async def call(n: int) -> None:
            results.append(await post(pool, b"%d" % n))

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                for n in range(5):
                    tg.start_soon(call, n)
                await app.all_in.wait()
                assert app.in_flight == 2  # the other three wait in the pool, not on the server
                app.hold.set()
    assert sorted(body for _, body in results) == [b"0", b"1", b"2", b"3", b"4"]
    assert len(set(app.ports)) == 2


async def test_waiting_for_a_connection_past_the_connect_deadline_is_a_connect_timeout() -> None:
    app = EchoApp()
    app.hold, app.expect_in_flight = anyio.Event(), 1
    async with (
        serve_asgi(app) as base_url,
        pool_for(f"{base_url}/mcp", max_connections=1, connect_s=0.2) as pool,
    ):
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(post, pool, b"held")
                await app.all_in.wait()
                with pytest.raises(ConnectTimeout, match=r"within 0\.2s"):
                    await post(pool, b"second")
                app.hold.set()


async def test_nothing_listening_is_a_clear_connection_error() -> None:
    async with raw_server(take_request) as (url, _):
        pass  # the port is closed again: nothing listens there now
    async with pool_for(url) as pool:
        with anyio.fail_after(TIMEOUT), pytest.raises(WireError, match="could not connect"):
            await post(pool, b"x")


@pytest.mark.parametrize(
    ("framing", "reused"),
    [
        (b"content-length: 11\r\n\r\nhello world", True),
        (b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", True),
        (b"\r\nhello world", False),  # no length: the body runs to the close
    ],
    ids=["content-length", "chunked", "close-delimited"],
)
async def test_every_body_framing_arrives_whole(framing: bytes, reused: bool) -> None:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n" + framing)
            await writer.drain()
            if not reused:
                return

    async with raw_server(reply) as (url, accepted), pool_for(url) as pool:
        with anyio.fail_after(TIMEOUT):
            assert await post(pool, b"one") == (200, b"hello world")
            assert await post(pool, b"two") == (200, b"hello world")
    assert len(accepted) == (1 if reused else 2)


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    # Claims keep-alive, then closes at once, as a server whose idle timeout just ran out.
    reply = answer_once(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    async with raw_server(reply) as (url, accepted), pool_for(url) as pool:
        with anyio.fail_after(TIMEOUT):
            for _ in range(3):
                assert await post(pool, b"x") == (200, b"ok")
    assert len(accepted) == 3


async def test_a_malformed_response_is_an_error_not_a_hang() -> None:
    reply = answer_once(b"this is not HTTP\r\n\r\n", keep_open=True)
    async with raw_server(reply) as (url, _), pool_for(url) as pool:
        with anyio.fail_after(TIMEOUT), pytest.raises(WireError, match="malformed HTTP response"):
            await post(pool, b"x")


async def test_a_connection_dropped_mid_body_is_an_error() -> None:
    reply = answer_once(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b")
    async with raw_server(reply) as (url, _), pool_for(url) as pool:
        with anyio.fail_after(TIMEOUT), pytest.raises(WireError, match="closed before the response ended"):
            await post(pool, b"x")


@pytest.mark.parametrize(
    "headers",
    [{"x-user-key": "abc\r\nx-admin: yes"}, {"bad name": "v"}, {"x-key": "caf\u00e9\u2603"}],
    ids=["crlf-in-value", "space-in-name", "not-latin-1"],
)
async def test_a_header_that_would_corrupt_the_request_is_refused_before_sending(
    headers: dict[str, str],
) -> None:
    async with raw_server(take_request) as (url, accepted), pool_for(url) as pool:
        with anyio.fail_after(TIMEOUT), pytest.raises(WireError, match="refusing to send"):
            await post(pool, b"x", headers)
    assert accepted == []


def sse_reply(end: asyncio.Event | None) -> Reply:
    """An SSE response whose one event arrives at once and whose end follows only once `end`
    is set (never, without one), as from a server closing its stream after the response."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        event = b"event: message\ndata: {}\n\n"
        while True:
            await read_request(reader)
            writer.write(head + b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            if end is None:
                await reader.read()  # until the client gives up on the connection
                return
            await end.wait()
            end.clear()
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    return reply


async def read_first_event(pool: Pool) -> bytes:
    response = await pool.request("POST", {}, b"x")
    try:
        return await response.chunk()
    finally:
        response.close()  # before the body has ended


# One connection at most in these two: the second call can only have the first connection
# back, or a new one once the first is given up.


async def test_a_stream_closed_after_its_event_goes_back_to_the_pool_once_it_ends() -> None:
    end = asyncio.Event()
    async with raw_server(sse_reply(end)) as (url, accepted), pool_for(url, max_connections=1) as pool:
        with anyio.fail_after(TIMEOUT):
            assert b"data: {}" in await read_first_event(pool)
            end.set()  # the stream ends only now, after the reader has gone
            assert b"data: {}" in await read_first_event(pool)
    assert len(accepted) == 1


async def test_a_stream_that_never_ends_after_its_event_is_closed_and_replaced() -> None:
    async with raw_server(sse_reply(None)) as (url, accepted), pool_for(url, max_connections=1) as pool:
        with anyio.fail_after(TIMEOUT):
            assert b"data: {}" in await read_first_event(pool)
            assert b"data: {}" in await read_first_event(pool)
    assert len(accepted) == 2


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (certificate, key) PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    loopback = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(loopback, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@asynccontextmanager
async def serve_tls(app: EchoApp, cert: Path, key: Path) -> AsyncIterator[str]:
    sock = listening_socket()
    config = uvicorn.Config(app, log_level="warning", ssl_certfile=str(cert), ssl_keyfile=str(key))
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        yield f"https://127.0.0.1:{sock.getsockname()[1]}/mcp"
    finally:
        server.should_exit = True
        with anyio.fail_after(TIMEOUT):
            await task
        sock.close()


async def test_https_upstreams_are_verified_against_the_trusted_certificates(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    app = EchoApp()
    async with serve_tls(app, cert, key) as url:
        trusted = ssl.create_default_context(cafile=str(cert))
        async with Pool(url, {}, connect_s=5.0, user_agent="test", ssl_context=trusted) as pool:
            with anyio.fail_after(TIMEOUT):
                assert await post(pool, b"over TLS") == (200, b"over TLS")
        async with Pool(url, {}, connect_s=5.0, user_agent="test") as pool:  # the system's trust only
            with anyio.fail_after(TIMEOUT), pytest.raises(WireError, match="CERTIFICATE_VERIFY_FAILED"):
                await post(pool, b"refused")
    assert app.ports and len(app.headers) == 1  # the unverified server never saw a request


async def test_bytes_after_a_response_end_close_the_connection_instead_of_feeding_the_next() -> None:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            # A response, then the head of another nobody asked for.
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 5\r\n"
            )
            await writer.drain()

    async with raw_server(reply) as (url, accepted), pool_for(url) as pool:
        with anyio.fail_after(TIMEOUT):
            assert await post(pool, b"one") == (200, b"ok")
            assert await post(pool, b"two") == (200, b"ok")
    assert len(accepted) == 2  # the first connection was not trusted again


@pytest.mark.parametrize(
    ("response", "complaint"),
    [
        (b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-h%d: v\r\n" % n for n in range(300)), "over 256 headers"),
        (b"HTTP/1.1 200 OK\r\nx-big: " + b"v" * 70_000 + b"\r\n", "over 65536 bytes"),
        (b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n" * 20, "interim"),
    ],
    ids=["many-headers", "huge-header", "endless-interim"],
)
async def test_an_upstream_cannot_make_the_gateway_hold_an_endless_head(
    response: bytes, complaint: str
) -> None:
    async with raw_server(answer_once(response, keep_open=True)) as (url, _), pool_for(url) as pool:
        with anyio.fail_after(TIMEOUT), pytest.raises(WireError, match=complaint):
            await post(pool, b"x")
